# ferry: one non-recursive Makefile.
#   make            build the programs into build/
#   make check      install missing Debian packages, build, run every test,
#                   then all of them again under ASan+UBSan (CHECK_SAN=0: not)
#   make demo       the whole job on a built-in example, with figures
#   make bench      benchmarks side by side with peers (see bench/)
#   make SAN=1 ...  the same in build-san/ with ASan+UBSan
#   make lint       banned functions and header self-containment
#   make fuzz       libFuzzer on every parser target (FUZZ_SECONDS each)
#   make torture    the crash harness for hundreds of rounds
#   V=1             show full commands

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin

ifeq ($(FUZZ),1)
B := build-fuzz
CC := clang
SANFLAGS := -fsanitize=address,undefined,fuzzer-no-link -fno-omit-frame-pointer
else ifeq ($(SAN),1)
B := build-san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else
B := build
SANFLAGS :=
endif

PKGS := libsodium libzstd sqlite3 libcryptsetup blkid jansson libnbd zlib libcrypto
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CC ?= cc
WARN := -Wall -Wextra -Wshadow -Wformat=2 -Wstrict-prototypes \
	-Wmissing-prototypes -Wvla -Wcast-qual -Wpointer-arith \
	-Wimplicit-fallthrough -Wundef -Wwrite-strings -Wnull-dereference \
	-Wold-style-definition -Wdouble-promotion -Werror
# Truncated messages are intended (struct err has a fixed size).
ifneq ($(CC),clang)
WARN += -Wno-format-truncation
endif
HARDEN := -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE
CFLAGS ?= -O2 -g
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE $(CFLAGS) $(WARN) $(HARDEN) $(SANFLAGS) \
	$(PKG_CFLAGS) -MMD -MP
LDFLAGS_ALL := -pie -Wl,-z,relro,-z,now $(SANFLAGS) $(LDFLAGS)
LIBS := $(PKG_LIBS) -lpthread

ifeq ($(V),1)
Q :=
else
Q := @
endif

LIB_SRC := $(sort $(wildcard common/*.c image/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(B)/%.o)
PROGS := seed ingest appliance
SEED_SRC := $(sort $(wildcard seeder/*.c))
INGEST_SRC := $(sort $(wildcard ingest/*.c))
APPLIANCE_SRC := $(sort $(wildcard appliance/*.c))
UNIT_SRC := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(B)/tests/%)
TESTLIB_SRC := $(sort $(wildcard tests/lib/*.c))
TESTLIB_OBJ := $(TESTLIB_SRC:%.c=$(B)/%.o)
FUZZ_SRC := $(sort $(wildcard tests/fuzz/fuzz_*.c))
REPLAY_BIN := $(FUZZ_SRC:tests/fuzz/fuzz_%.c=$(B)/fuzz/replay_%)
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/fuzz_%.c=$(B)/fuzz/fuzz_%)
FUZZ_SECONDS ?= 60
TOOL_SRC := $(sort $(filter-out tests/tools/failmalloc.c,$(wildcard tests/tools/*.c)))
TOOL_BIN := $(TOOL_SRC:tests/tools/%.c=$(B)/tools/%)
FAILMALLOC := $(B)/tools/failmalloc.so

BINS := $(B)/ferry-seed $(B)/ferry-ingest $(B)/ferry-appliance

ifeq ($(FUZZ),1)
all: $(FUZZ_BIN)
else
all: $(BINS) $(UNIT_BIN) $(TOOL_BIN) $(REPLAY_BIN) $(FAILMALLOC)
endif

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $@")
	$(Q)$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(B)/libferry.a: $(LIB_OBJ)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(B)/ferry-seed: $(SEED_SRC:%.c=$(B)/%.o) $(B)/libferry.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

$(B)/ferry-ingest: $(INGEST_SRC:%.c=$(B)/%.o) $(B)/libferry.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

$(B)/ferry-appliance: $(APPLIANCE_SRC:%.c=$(B)/%.o) $(B)/libferry.a
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

$(B)/tests/%: $(B)/tests/unit/%.o $(TESTLIB_OBJ) $(B)/libferry.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

$(B)/fuzz/replay_%: $(B)/tests/fuzz/fuzz_%.o $(B)/tests/fuzz/replay.o $(B)/libferry.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

$(B)/fuzz/fuzz_%: $(B)/tests/fuzz/fuzz_%.o $(B)/libferry.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_ALL) -fsanitize=fuzzer -o $@ $^ $(LIBS)

$(B)/tools/%: $(B)/tests/tools/%.o $(B)/libferry.a
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

# The allocation-failure shim (LD_PRELOAD, tests/e2e/97_allocfail.sh): a
# shared object without the sanitizers, which would have to come first.
$(FAILMALLOC): tests/tools/failmalloc.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $@")
	$(Q)$(CC) -std=c11 $(CFLAGS) $(WARN) -fPIC -shared -o $@ $< -ldl

deps:
	sh tests/deps.sh --install

deps-ok:
	@sh tests/deps.sh --if-missing

# make check: every test on build/, then all of them again on the ASan+UBSan
# build in build-san/ (CHECK_SAN=0 skips that second run); one summary line.
# make SAN=1 check: the sanitizer build alone.
CHECK_SAN ?= 1
NPROC := $(shell nproc 2>/dev/null || echo 2)
check: deps-ok
	$(Q)$(MAKE) --no-print-directory -j$(NPROC) all
ifeq ($(B)$(CHECK_SAN),build1)
	$(Q)$(MAKE) --no-print-directory -j$(NPROC) SAN=1 all
	$(Q)FERRY_BUILDS="$(CURDIR)/build $(CURDIR)/build-san" sh tests/run.sh
else
	$(Q)FERRY_BUILD=$(CURDIR)/$(B) sh tests/run.sh
endif

demo: deps-ok
	$(Q)$(MAKE) --no-print-directory all
	$(Q)FERRY_BUILD=$(CURDIR)/$(B) sh tests/demo.sh

bench: deps-ok
	$(Q)$(MAKE) --no-print-directory all
	$(Q)FERRY_BUILD=$(CURDIR)/$(B) sh bench/run.sh

lint:
	$(Q)sh tests/lint.sh

# The crash harnesses (seeding and ingest; the delta service) for a long
# while (FERRY_CRASH_ROUNDS rounds each, default 300).
torture: deps-ok
	$(Q)$(MAKE) --no-print-directory all
	$(Q)FERRY_BUILD=$(CURDIR)/$(B) FERRY_CRASH_ROUNDS=$${FERRY_CRASH_ROUNDS:-300} \
		sh tests/run.sh e2e/90_crash e2e/91_crash_sync

# libFuzzer (clang): every target for FUZZ_SECONDS over a copy of its corpus;
# new inputs that libFuzzer keeps are left in build-fuzz/corpus/NAME.
fuzz: deps-ok
	$(Q)$(MAKE) --no-print-directory FUZZ=1 all
	$(Q)for f in $(FUZZ_SRC:tests/fuzz/fuzz_%.c=%); do \
		mkdir -p build-fuzz/corpus/$$f; \
		cp -n tests/fuzz/corpus/$$f/* build-fuzz/corpus/$$f/ 2>/dev/null; \
		echo "  FUZZ    $$f ($(FUZZ_SECONDS) s)"; \
		build-fuzz/fuzz/fuzz_$$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
			build-fuzz/corpus/$$f 2>&1 | grep -E "stat::number_of_executed_units|ERROR|crash" ; \
	done

install: $(BINS)
	install -d $(DESTDIR)$(BINDIR)
	install -m 0755 $(BINS) $(DESTDIR)$(BINDIR)

clean:
	rm -rf build build-san build-fuzz

.PHONY: all deps deps-ok check demo bench lint fuzz torture install clean
.SECONDARY:

-include $(shell find $(B) -name '*.d' 2>/dev/null)
