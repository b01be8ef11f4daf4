# pare: build, test, benchmark. `make help` lists the targets.
CC      ?= cc
OPENMP  ?= 1
PORTABLE ?= 0
PREFIX  ?= /usr/local
BUILD   ?= build

ARCHFLAGS := $(if $(filter 1,$(PORTABLE)),,-march=native)
OMPFLAGS  := $(if $(filter 1,$(OPENMP)),-fopenmp,)
# -ffp-contract=off: no silent FMA contraction; kernels choose FMA explicitly.
# OPT is the optimization (and sanitizer) part; EXTRA_CFLAGS is added last.
OPT     ?= -O3
CFLAGS  := $(OPT) -std=c11 $(ARCHFLAGS) -ffp-contract=off -fno-math-errno -Wall -Wextra -Wpedantic \
           -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -I. $(OMPFLAGS) -MMD -MP $(EXTRA_CFLAGS)
LDLIBS  += -lm $(OMPFLAGS)

MODULES := tensor autograd nn optim compress data
LIB_SRC := $(foreach m,$(MODULES),$(wildcard $(m)/*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
LIB     := $(BUILD)/libpare.a

MNIST_SRC := $(wildcard examples/mnist*.c) examples/cli.c
EXAMPLES  := $(BUILD)/mnist $(BUILD)/seed_pytorch $(BUILD)/seed_keras
TEST_SRC  := $(filter-out tests/fuzz_%.c,$(wildcard tests/*.c))
TEST_BIN  := $(BUILD)/test_pare
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/%)
FUZZ_SRC  := $(wildcard tests/fuzz_*.c)

# Keep object files that pattern rules make along the way.
.SECONDARY:
.PHONY: all test san fuzz bench bench-torch data mnist install clean format lint help golden
all: $(LIB) $(EXAMPLES)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

$(BUILD)/mnist: $(MNIST_SRC:%.c=$(BUILD)/obj/%.o) $(LIB)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/seed_%: $(BUILD)/obj/examples/seed_%.o $(BUILD)/obj/examples/cli.o $(LIB)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)
$(TEST_BIN): $(TEST_SRC:%.c=$(BUILD)/obj/%.o) $(LIB)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/bench_%: $(BUILD)/obj/bench/bench_%.o $(BUILD)/obj/examples/cli.o $(LIB)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

test: all $(TEST_BIN)
	$(TEST_BIN)

# AddressSanitizer + UndefinedBehaviorSanitizer over the whole test suite.
san:
	$(MAKE) --no-print-directory BUILD=build/san OPENMP=0 \
	  OPT="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all" \
	  build/san/test_pare
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 build/san/test_pare

# libFuzzer targets for every parser, a fixed short budget each.
FUZZ_SECONDS ?= 20
fuzz:
	@for f in $(FUZZ_SRC); do \
	  n=$$(basename $$f .c); \
	  mkdir -p build/fuzz/corpus-$$n; \
	  clang -std=c11 -g -O1 -I. -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -ffp-contract=off \
	    -fsanitize=fuzzer,address,undefined $$f $(LIB_SRC) -lm -o build/fuzz/$$n || exit 1; \
	  cp -n tests/corpus/$$n/* build/fuzz/corpus-$$n/ 2>/dev/null; \
	  echo "fuzzing $$n for $(FUZZ_SECONDS) s"; \
	  build/fuzz/$$n -max_total_time=$(FUZZ_SECONDS) -max_len=65536 build/fuzz/corpus-$$n \
	    2>build/fuzz/$$n.log || { tail -40 build/fuzz/$$n.log; exit 1; }; \
	  tail -1 build/fuzz/$$n.log; \
	done

bench: $(BENCH_BIN) $(BUILD)/mnist
	@for b in $(BENCH_BIN); do echo "== $$b"; $$b || exit 1; done
	@if [ -f data/mnist/train-images-idx3-ubyte ] && [ -x /usr/bin/time ]; then \
	  echo "== peak memory: build/mnist train --arch seedcnn --epochs 1 (dataset included)"; \
	  /usr/bin/time -f "peak RSS %M KB (PyTorch on the protocol: 734 MB)" \
	    $(BUILD)/mnist train --arch seedcnn --epochs 1 >/dev/null 2>$(BUILD)/bench_rss.log; \
	  tail -n 1 $(BUILD)/bench_rss.log; \
	else echo "(peak memory: needs data/mnist, run make data, and /usr/bin/time)"; fi
	@if /usr/bin/python3 -c "import torch" 2>/dev/null; then \
	  echo "== PyTorch on the same protocol, this run (bench/torch_compare.py)"; \
	  /usr/bin/python3 bench/torch_compare.py || exit 1; \
	else echo "(PyTorch side by side: install Debian's python3-torch; make bench-torch runs that part alone)"; fi

# The same protocol in PyTorch (Debian's python3-torch), side by side.
bench-torch: $(BUILD)/bench_train $(BUILD)/bench_int8
	/usr/bin/python3 bench/torch_compare.py

data:
	sh data/fetch_mnist.sh data/mnist

# The main job: fetch MNIST, build, train, evaluate and print the table.
mnist: all data
	$(BUILD)/mnist train --arch seedcnn --out $(BUILD)/seedcnn.safetensors
	$(BUILD)/mnist eval --model $(BUILD)/seedcnn.safetensors

install: $(LIB)
	mkdir -p $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include/pare
	cp $(LIB) $(DESTDIR)$(PREFIX)/lib/
	for m in $(MODULES); do \
	  mkdir -p $(DESTDIR)$(PREFIX)/include/pare/$$m; \
	  cp $$m/*.h $(DESTDIR)$(PREFIX)/include/pare/$$m/ 2>/dev/null || true; done
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@OMP@|$(OMPFLAGS)|' pare.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/pare.pc

format:
	clang-format -i $(LIB_SRC) $(wildcard */*.h) $(wildcard examples/*.c tests/*.c bench/*.c)

lint:
	@# varFuncNullUB: NULL ends pare_sequential's layer list; it is ((void *)0) in C.
	@# -D__GNUC__: gcc and clang both define it, and it shows cppcheck the noreturn attributes.
	cppcheck --quiet -D__GNUC__ --enable=warning,performance,portability --error-exitcode=1 --inline-suppr \
	  --suppress=missingIncludeSystem --suppress=varFuncNullUB -I. $(MODULES) examples tests bench
	clang-tidy --quiet $(LIB_SRC) -- -std=c11 -I. -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE

clean:
	rm -rf build

help:
	@echo "make [all]   library and examples into build/"
	@echo "make test    unit tests (no MNIST needed)"
	@echo "make mnist   fetch MNIST, train seedcnn, evaluate"
	@echo "make data    fetch MNIST into data/mnist/"
	@echo "make bench   throughput and latency"
	@echo "make san     tests under ASan + UBSan"
	@echo "make fuzz    libFuzzer on every parser (FUZZ_SECONDS each)"
	@echo "make install PREFIX=..."

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
