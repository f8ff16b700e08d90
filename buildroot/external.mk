include $(sort $(wildcard $(BR2_EXTERNAL_SKERRY_PATH)/package/*/*.mk))

# The agent's bridge networks take their addresses from the host-local IPAM
# plugin, which Buildroot's cni-plugins package does not build. This file is
# read after the packages' own .mk files and the build commands expand the
# variable late, so adding the plugin here is enough.
ifeq ($(BR2_PACKAGE_CNI_PLUGINS),y)
SKERRY_CNI_PLUGINS_MISSING := $(filter-out $(CNI_PLUGINS_BUILD_TARGETS),plugins/ipam/host-local)
CNI_PLUGINS_BUILD_TARGETS += $(SKERRY_CNI_PLUGINS_MISSING)
endif
