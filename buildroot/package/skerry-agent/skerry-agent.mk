################################################################################
#
# skerry-agent
#
################################################################################

# Built from the Cargo workspace this br2-external tree lives in.
SKERRY_AGENT_VERSION = 0.1.0
SKERRY_AGENT_SITE = $(BR2_EXTERNAL_SKERRY_PATH)/..
SKERRY_AGENT_SITE_METHOD = local
SKERRY_AGENT_LICENSE = Apache-2.0
SKERRY_AGENT_LICENSE_FILES = LICENSE

# containerd-client compiles containerd's protobuf definitions at build time.
SKERRY_AGENT_DEPENDENCIES = host-protobuf

# Left out of the copy: build output (a developer's target/, a Buildroot output
# directory made inside the repository) and the repository's Cargo settings,
# which name a cross linker for builds outside Buildroot.
SKERRY_AGENT_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude /target --exclude /output --exclude /.cargo

SKERRY_AGENT_CARGO_BUILD_OPTS = -p skerry-agent --bin skerry-agent

# The agent is bind-mounted into containers as their init and runs as their log
# driver, so it links its C library in statically (the default of Rust's musl
# targets, asked for explicitly here). ring's C code is built with the
# target's compiler. opt-level "z" as scripts/build-agent builds it: the code
# pages are most of the agent's resident memory.
SKERRY_AGENT_CARGO_ENV = \
	PROTOC=$(HOST_DIR)/bin/protoc \
	CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
	CC_$(subst -,_,$(RUSTC_TARGET_NAME))="$(TARGET_CC)" \
	CARGO_TARGET_$(call UPPERCASE,$(RUSTC_TARGET_NAME))_RUSTFLAGS="-C target-feature=+crt-static"

# cargo-package vendors a crate's dependencies when it downloads the crate; a
# local source has no download step, and the build itself runs with --offline.
# So the crates are fetched into cargo's home first: from the network the first
# time, from that cache afterwards.
define SKERRY_AGENT_FETCH_CRATES
	cd $(@D) && { \
		$(TARGET_MAKE_ENV) $(PKG_CARGO_ENV) \
			cargo fetch --locked --offline --manifest-path Cargo.toml 2>/dev/null || \
		$(TARGET_MAKE_ENV) $(PKG_CARGO_ENV) \
			cargo fetch --locked --manifest-path Cargo.toml; \
	}
endef
SKERRY_AGENT_PRE_BUILD_HOOKS += SKERRY_AGENT_FETCH_CRATES

define SKERRY_AGENT_INSTALL_TARGET_CMDS
	$(INSTALL) -D -m 0755 \
		$(@D)/target/$(RUSTC_TARGET_NAME)/$(if $(BR2_ENABLE_DEBUG),debug,release)/skerry-agent \
		$(TARGET_DIR)/usr/bin/skerry-agent
	if $(TARGET_READELF) -d $(TARGET_DIR)/usr/bin/skerry-agent | grep -q NEEDED; then \
		echo "skerry-agent is dynamically linked: containers could not run it" >&2; \
		exit 1; \
	fi
endef

$(eval $(cargo-package))
