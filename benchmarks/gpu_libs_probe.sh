#!/usr/bin/env bash
# Why C++ errors whose message formats a number crash fusedopt._C on the lent H200
# machine (torch 2.11, /opt/gcc g++) and not elsewhere: which compiler built it, which
# libstdc++ the process loads, what the .so needs, and whether a small .so built by the
# same compiler (Python's configured one, which setup.py uses) that formats a number
# under torch crashes too. Run by gpu_check.sh
# (step 'libs') after the build; usable on any machine.
set -u
PY="${PYTHON:-python3}"
so=$(ls fusedopt/_C*.so | head -n1)
CXX=$("$PY" -c 'import sysconfig; print((sysconfig.get_config_var("CXX") or "c++").split()[0])')
echo "compiler of the build: $CXX"; "$CXX" --version | head -n1
for c in /usr/bin/g++ /usr/bin/g++-13 /usr/bin/g++-14; do [[ -x $c ]] && echo "also: $c $($c -dumpfullversion)"; done
echo "its libstdc++: $("$CXX" -print-file-name=libstdc++.so.6)"
echo "--- loaded after import fusedopt:"
"$PY" -c 'import fusedopt; print("".join(l for l in open("/proc/self/maps") if "libstdc" in l or "libgcc_s" in l or "libgomp" in l))' \
  | awk '{print $6}' | sort -u
echo "--- NEEDED of $so:"; readelf -d "$so" 2>/dev/null | grep NEEDED | awk '{print $5}' | tr '\n' ' '; echo
echo "--- highest GLIBCXX/CXXABI versions it needs:"
objdump -T "$so" 2>/dev/null | grep -oE "GLIBCXX_[0-9.]+|CXXABI_[0-9.]+" | sort -uV | tail -n 3 | tr '\n' ' '; echo
echo "--- std:: symbols it defines (weak template instances, count):"
nm -DC --defined-only "$so" 2>/dev/null | grep -c " std::" 
nm -DC --defined-only "$so" 2>/dev/null | grep -E " std::(locale|num_put|basic_ostream|basic_ostringstream|__cxx11::basic_ostringstream|ios_base)" | head -n 12

tmp=$(mktemp -d)
cat >"$tmp/fmt.cpp" <<'CPP'
#include <sstream>
#include <cstdio>
extern "C" void fmt() { std::ostringstream os; os << "n=" << 42L << " f=" << 1.5; std::printf("%s\n", os.str().c_str()); }
CPP
for variant in "plain:" "bsymbolic:-Wl,-Bsymbolic-functions" "static:-static-libstdc++"; do
  name=${variant%%:*}; flags=${variant#*:}
  "$CXX" -O2 -fPIC -shared $flags "$tmp/fmt.cpp" -o "$tmp/fmt_$name.so" || continue
  for pre in "" "import torch;"; do
    "$PY" -c "${pre}import ctypes; ctypes.CDLL('$tmp/fmt_$name.so').fmt()" >/dev/null 2>&1
    echo "plain .so formatting a number, built $name, ${pre:-without torch}: exit $?"
  done
done
echo "--- error probe with the compiler's own libstdc++ preloaded:"
LD_PRELOAD=$("$CXX" -print-file-name=libstdc++.so.6) "$PY" -X faulthandler -c '
import torch, fusedopt
try:
    torch.ops.fusedopt.batch_norm_train(torch.randn(2, 4, 3), None, None, None, False, -1.0)
except ValueError as e:
    print("ValueError raised cleanly:", str(e)[:80])' 2>&1 | tail -n 2
echo "exit ${PIPESTATUS[0]}"
