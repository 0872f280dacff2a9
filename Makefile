# uhmm - heterogeneous memory management in user space.
# One non-recursive Makefile; sanitizer builds re-run it with another BUILD dir.

VERSION   := 0.1.0
SOVERSION := 0
PREFIX    ?= /usr/local
LIBDIR    ?= $(PREFIX)/lib
INCDIR    ?= $(PREFIX)/include
BINDIR    ?= $(PREFIX)/bin
MANDIR    ?= $(PREFIX)/share/man
DESTDIR   ?=
BUILD     ?= build

CC        ?= cc
OPT       ?= -O2 -g
SAN       ?=
WARN      := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
             -Wpointer-arith -Wvla -Wformat=2 -Wundef -Wno-unused-parameter
CPPFLAGS  += -Iinclude -D_GNU_SOURCE
# make FAULT_INJECT=1 BUILD=build-fi: internal calls fail on the UHMM_FI schedule;
# the library is one partially linked object whose malloc/calloc/realloc calls
# go through uhmm_fi_*() (fault_inject.c; rule under "Fault injection" below).
ifeq ($(FAULT_INJECT),1)
CPPFLAGS  += -DUHMM_FAULT_INJECT
override LIB_OBJ = $(BUILD)/libuhmm-fi.o
endif
CFLAGS    += -std=gnu11 $(OPT) $(WARN) -pthread $(SAN)
# no interposition of our own exported functions: calls inside the library inline
LIBCFLAGS := -fPIC -fvisibility=hidden -fno-semantic-interposition
LDFLAGS   += $(SAN)
LIBS      := -pthread -lc -ljemalloc
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null || echo -lcheck -lsubunit -lm -lrt)
JSON_CFLAGS := $(shell pkg-config --cflags json-c 2>/dev/null)
JSON_LIBS   := $(shell pkg-config --libs json-c 2>/dev/null || echo -ljson-c)

LIB_SRC   := $(sort $(wildcard src/*.c))
LIB_OBJ   := $(LIB_SRC:src/%.c=$(BUILD)/src/%.o)
STATIC    := $(BUILD)/libuhmm.a
SHARED    := $(BUILD)/libuhmm.so.$(VERSION)
PRELOAD   := $(BUILD)/libuhmm-preload.so

TEST_SRC  := $(sort $(wildcard tests/unit/test_*.c))
TESTS     := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
TUTIL_OBJ := $(BUILD)/tests/t_util.o
BENCH_SRC := $(sort $(wildcard bench/*.c))
BENCHES   := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
CLI_SRC   := $(sort $(wildcard cli/*.c))
CLI       := $(BUILD)/uhmm
EXAMPLE_SRC := $(sort $(wildcard examples/*.c))
EXAMPLES  := $(EXAMPLE_SRC:examples/%.c=$(BUILD)/examples/%)

# Threaded tests that also run under ThreadSanitizer.
# (not test_inthread: UHMM_MM_INTHREAD serves faults inside a SIGBUS handler,
# which ThreadSanitizer reports as signal-unsafe by design; ASan covers it)
TSAN_TESTS ?= test_pagemap test_resource test_mirror test_migrate test_sim test_kmem test_errors test_errors_fi test_races test_util

.PHONY: all lib tests benches check check-asan check-tsan demo valgrind bench install \
        abi-check lint clean header-test deps
all: lib $(PRELOAD) $(CLI) tests benches $(EXAMPLES)
lib: $(STATIC) $(SHARED)
tests: $(TESTS)
benches: $(BENCHES)

$(BUILD)/src/%.o: src/%.c $(wildcard src/*.h) $(wildcard include/uhmm/*.h)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LIBCFLAGS) -c -o $@ $<

$(STATIC): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(SHARED): $(LIB_OBJ) src/libuhmm.map
	$(CC) -shared $(LDFLAGS) -Wl,-soname,libuhmm.so.$(SOVERSION) \
		-Wl,--version-script=src/libuhmm.map -Wl,-z,defs -o $@ $(LIB_OBJ) $(LIBS)
	ln -sf libuhmm.so.$(VERSION) $(BUILD)/libuhmm.so.$(SOVERSION)
	ln -sf libuhmm.so.$(VERSION) $(BUILD)/libuhmm.so

# LD_PRELOAD interposer of mprotect/munmap/madvise/mremap; shares libuhmm.so.0.
$(PRELOAD): preload/uhmm_preload.c $(SHARED)
	$(CC) $(CPPFLAGS) $(CFLAGS) -fPIC -fvisibility=hidden -shared $(LDFLAGS) -o $@ $< \
		-L$(BUILD) -l:libuhmm.so.$(SOVERSION) -Wl,-rpath,'$$ORIGIN' -Wl,-z,defs -ldl $(LIBS)

$(TUTIL_OBJ): tests/t_util.c tests/t_util.h $(wildcard include/uhmm/*.h)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Itests -Isrc $(CFLAGS) -c -o $@ $<

# Tests link the static library: one binary per concept, internal symbols reachable.
$(BUILD)/tests/%: tests/unit/%.c $(TUTIL_OBJ) $(STATIC) tests/t_util.h
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Itests -Isrc $(CFLAGS) -o $@ $< $(TUTIL_OBJ) $(STATIC) \
		$(LDFLAGS) $(CHECK_LIBS) $(LIBS)

$(BUILD)/bench/%: bench/%.c bench/bench_util.h $(STATIC)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Ibench $(CFLAGS) -o $@ $< $(STATIC) $(LDFLAGS) $(LIBS) -lm

$(CLI): $(CLI_SRC) $(wildcard cli/*.h) $(STATIC)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(JSON_CFLAGS) $(CFLAGS) -o $@ $(CLI_SRC) $(STATIC) \
		$(LDFLAGS) $(JSON_LIBS) $(LIBS)

$(BUILD)/examples/%: examples/%.c $(STATIC)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -o $@ $< $(STATIC) $(LDFLAGS) $(LIBS)

deps:
	@bash scripts/deps.sh

# Installs build/test dependencies when missing (Debian), then runs every test.
check: deps
	$(MAKE) all header-test abi-check
	./tests/run.sh $(BUILD)/tests

check-asan:
	$(MAKE) BUILD=build-asan SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" tests build-asan/uhmm
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
		CK_TIMEOUT_MULTIPLIER=4 ./tests/run.sh build-asan/tests

check-tsan:
	$(MAKE) BUILD=build-tsan SAN="-fsanitize=thread" OPT="-O1 -g" tests
	TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" CK_TIMEOUT_MULTIPLIER=6 \
		./tests/run.sh build-tsan/tests $(TSAN_TESTS)

demo: deps
	$(MAKE) $(CLI)
	$(CLI) demo

# One valgrind memcheck run of the demo; any report fails it. Valgrind runs
# one thread at a time, so a thread blocked in a userfaultfd fault would keep
# the handler thread from ever running: the demo runs in in-thread (SIGBUS)
# mode, with precise registers at memory accesses so the faulting access
# resumes correctly after uhmm's SIGBUS handler.
VALGRIND_FLAGS = -q --error-exitcode=99 --leak-check=full \
	--errors-for-leak-kinds=definite,indirect,possible \
	--vex-iropt-register-updates=allregs-at-mem-access
valgrind: deps
	$(MAKE) $(CLI)
	valgrind $(VALGRIND_FLAGS) $(CLI) demo --inthread 8

bench: benches
	@for b in $(BENCHES); do echo "== $$b"; $$b || exit 1; done

header-test:
	@mkdir -p $(BUILD)/hdr
	@for h in include/uhmm.h include/uhmm/*.h; do \
		echo "#include <$${h#include/}>" > $(BUILD)/hdr/t.c; \
		$(CC) $(CPPFLAGS) -std=c11 -Wall -Wextra -Werror -pedantic -fsyntax-only $(BUILD)/hdr/t.c || exit 1; \
		if command -v g++ >/dev/null; then \
		g++ $(CPPFLAGS) -x c++ -std=c++17 -Wall -Wextra -Werror -fsyntax-only $(BUILD)/hdr/t.c || exit 1; fi; \
	done; echo "header-test: ok"

# Exported symbols must be exactly the version script's globals.
abi-check: $(SHARED)
	@nm -D --defined-only $(SHARED) | awk '$$2 == "T" || $$2 == "D" || $$2 == "B" {print $$3}' \
		| sed 's/@.*//' | grep -v '^UHMM_' | sort -u > $(BUILD)/abi.syms
	@sed -n 's/^[[:space:]]*\(uhmm_[a-z0-9_]*\);.*/\1/p' src/libuhmm.map | sort -u > $(BUILD)/abi.map
	@diff -u $(BUILD)/abi.map $(BUILD)/abi.syms && echo "abi-check: ok"

install: lib
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCDIR)/uhmm
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)/
	ln -sf libuhmm.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libuhmm.so.$(SOVERSION)
	ln -sf libuhmm.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libuhmm.so
	install -m 644 include/uhmm.h $(DESTDIR)$(INCDIR)/
	install -m 644 include/uhmm/*.h $(DESTDIR)$(INCDIR)/uhmm/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCDIR@|$(INCDIR)|' \
		-e 's|@VERSION@|$(VERSION)|' uhmm.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/uhmm.pc
	@if [ -x $(CLI) ]; then install -d $(DESTDIR)$(BINDIR); install -m 755 $(CLI) $(DESTDIR)$(BINDIR)/; fi
	@if ls man/*.[13] >/dev/null 2>&1; then for m in man/*.[13]; do s=$${m##*.}; \
		install -d $(DESTDIR)$(MANDIR)/man$$s; install -m 644 $$m $(DESTDIR)$(MANDIR)/man$$s/; done; fi

lint:
	clang-format --dry-run --Werror src/*.c src/*.h include/uhmm/*.h
	cppcheck --error-exitcode=1 --quiet --std=c11 -Iinclude src
	shellcheck tests/*.sh .ci/run

clean:
	rm -rf build build-asan build-tsan build-fi build-fuzz

# ---------------------------------------------------------------------------
# Reliability (issue 6): stress driver with shadow verification, fuzzers.
STRESS     := $(BUILD)/stress
STRESS_SRC := $(sort $(wildcard tests/stress/*.c))
SECONDS    ?= 60

.PHONY: stress stress-fi fuzz fuzz-build
all: $(STRESS)
# test_stress runs build/stress; test_fuzz_replay runs the corpora.
$(BUILD)/tests/test_stress: $(STRESS)

$(STRESS): $(STRESS_SRC) $(wildcard tests/stress/*.h) $(STATIC)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Itests/stress $(CFLAGS) -o $@ $(STRESS_SRC) $(STATIC) $(LDFLAGS) $(LIBS)

# make stress SECONDS=600: the long run (seed printed first; UHMM_SEED=<n> replays).
stress: $(STRESS)
	$(STRESS) --duration $(SECONDS)
	$(STRESS) --dax --duration $$(( $(SECONDS) / 4 + 1 ))

# The stress run with fault injection: moves, copies, fills, device page
# allocations fail now and then (UHMM_FI to change it).
UHMM_FI ?= uffd_move:5%,uffd_copy:3%,uffd_zeropage:3%,page_alloc:5%
# The dax run: label writes cut short, label msyncs and library mallocs fail.
UHMM_FI_DAX ?= label_write:5%,label_sync:5%,malloc:1%
stress-fi:
	$(MAKE) FAULT_INJECT=1 BUILD=build-fi build-fi/stress
	UHMM_FI='$(UHMM_FI)' build-fi/stress --duration $(SECONDS)
	UHMM_FI='$(UHMM_FI_DAX)' build-fi/stress --dax --duration $(SECONDS)

# Fault injection: the library's own malloc/calloc/realloc references are
# renamed to uhmm_fi_*() in one partially linked object (fault_inject.c keeps
# the real ones; tests and libc are not touched). FAULT_INJECT=1 builds use it
# as LIB_OBJ; every build also makes $(FI_STATIC), which test_errors_fi links.
OBJCOPY  ?= objcopy
FI_REDEF := --redefine-sym malloc=uhmm_fi_malloc --redefine-sym calloc=uhmm_fi_calloc \
            --redefine-sym realloc=uhmm_fi_realloc
define fi_relink
$(LD) -r -o $@.tmp $(filter-out %/fault_inject.o,$^)
$(OBJCOPY) $(FI_REDEF) $@.tmp
$(LD) -r -o $@ $@.tmp $(filter %/fault_inject.o,$^)
@rm -f $@.tmp
endef

$(BUILD)/libuhmm-fi.o: $(LIB_SRC:src/%.c=$(BUILD)/src/%.o)
	$(fi_relink)

FI_DIR    := $(BUILD)/fi
FI_STATIC := $(FI_DIR)/libuhmm.a

$(FI_DIR)/src/%.o: src/%.c $(wildcard src/*.h) $(wildcard include/uhmm/*.h)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -DUHMM_FAULT_INJECT $(CFLAGS) $(LIBCFLAGS) -c -o $@ $<

$(FI_DIR)/libuhmm-fi.o: $(LIB_SRC:src/%.c=$(FI_DIR)/src/%.o)
	$(fi_relink)

$(FI_STATIC): $(FI_DIR)/libuhmm-fi.o
	@rm -f $@
	ar rcs $@ $^

# Allocation and thread failures of the public API (docs/errors.md "-" rows).
$(BUILD)/tests/test_errors_fi: tests/unit/test_errors_fi.c $(TUTIL_OBJ) $(FI_STATIC) tests/t_util.h
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -DUHMM_FAULT_INJECT -Itests -Isrc $(CFLAGS) -o $@ $< $(TUTIL_OBJ) \
		$(FI_STATIC) $(LDFLAGS) $(CHECK_LIBS) $(LIBS)

# Fuzz targets (tests/fuzz/fuzz_*.c, each defines LLVMFuzzerTestOneInput).
# With gcc they link tests/fuzz/replay.c, which replays tests/fuzz/corpus/<target>/
# in `make check` (test_fuzz_replay); `make fuzz SECONDS=N` builds them with
# clang -fsanitize=fuzzer,address and runs each for N seconds.
FUZZ_SRC     := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_NAMES   := $(FUZZ_SRC:tests/fuzz/%.c=%)
FUZZ_REPLAYS := $(FUZZ_NAMES:%=$(BUILD)/fuzz/replay_%)
FUZZ_CFLAGS   = -Isrc -Icli $(JSON_CFLAGS)
FUZZ_LIBS     = $(JSON_LIBS) $(LIBS)
FUZZ_BUILD   ?= build-fuzz
FUZZ_CC      ?= clang

all: $(FUZZ_REPLAYS)
$(BUILD)/tests/test_fuzz_replay: $(FUZZ_REPLAYS)

$(BUILD)/fuzz/replay_%: tests/fuzz/%.c tests/fuzz/replay.c $(wildcard tests/stress/*.h) $(wildcard cli/*.[ch]) $(STATIC)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(FUZZ_CFLAGS) $(CFLAGS) -o $@ $< tests/fuzz/replay.c $(STATIC) $(LDFLAGS) $(FUZZ_LIBS)

fuzz-build:
	@command -v $(FUZZ_CC) >/dev/null || { echo "make fuzz needs clang and libclang-rt-14-dev (apt-get install clang libclang-rt-14-dev)"; exit 1; }
	$(MAKE) BUILD=$(FUZZ_BUILD) CC=$(FUZZ_CC) SAN="-fsanitize=address,fuzzer-no-link -fno-omit-frame-pointer" $(FUZZ_BUILD)/libuhmm.a
	@mkdir -p $(FUZZ_BUILD)/fuzz
	@for t in $(FUZZ_NAMES); do \
		echo "  FUZZ $$t"; \
		$(FUZZ_CC) $(CPPFLAGS) $(FUZZ_CFLAGS) $(CFLAGS) -fsanitize=fuzzer,address -fno-omit-frame-pointer \
			-o $(FUZZ_BUILD)/fuzz/$$t tests/fuzz/$$t.c $(FUZZ_BUILD)/libuhmm.a $(FUZZ_LIBS) || exit 1; \
	done

# Runs each target for SECONDS in a scratch corpus seeded from the committed one.
fuzz: fuzz-build
	@for t in $(FUZZ_NAMES); do \
		rm -rf $(FUZZ_BUILD)/crashes/$$t; \
		mkdir -p $(FUZZ_BUILD)/corpus/$$t $(FUZZ_BUILD)/crashes/$$t; \
		cp -n tests/fuzz/corpus/$$t/* $(FUZZ_BUILD)/corpus/$$t/ 2>/dev/null; \
		echo "== $$t ($(SECONDS) s)"; \
		ASAN_OPTIONS=detect_leaks=1 $(FUZZ_BUILD)/fuzz/$$t -max_total_time=$(SECONDS) -timeout=20 \
			-print_final_stats=1 -artifact_prefix=$(FUZZ_BUILD)/crashes/$$t/ \
			$(FUZZ_BUILD)/corpus/$$t tests/fuzz/corpus/$$t -runs=-1 2>&1 | \
			grep -E "^#[0-9]+.*DONE|stat::number_of_executed_units|stat::new_units_added|cov:|ERROR|SUMMARY|Test unit written|^fuzz_api:|parse_size" | tail -n 8; \
		if [ -n "$$(ls -A $(FUZZ_BUILD)/crashes/$$t)" ]; then \
			echo "fuzz: $$t failed, inputs in $(FUZZ_BUILD)/crashes/$$t/"; exit 1; fi; \
	done
