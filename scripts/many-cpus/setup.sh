# --- many CPUs (scripts/many-cpus-vm.sh), before the suite ---------------------
# Booted with 64 present CPUs of which the kernel brought up 16 (maxcpus=16:
# 0-15). Bring 16-19 up and take 4-7 down: 16 online, sparse (0-3,8-19),
# with possible_cpus() = 64.
SYS=/sys/devices/system/cpu
set_cpu() { echo "$2" >"$SYS/cpu$1/online"; }
cpu_state() {
    echo "possible=$(cat $SYS/possible) present=$(cat $SYS/present) online=$(cat $SYS/online) count=$(nproc)"
}
for c in 16 17 18 19; do set_cpu $c 1; done
for c in 4 5 6 7; do set_cpu $c 0; done
SPARSE=$(cat $SYS/online)
echo # the console's first line starts with the terminal's reset codes
echo "$TAG-CPUS $(cpu_state)"
# The hot-plug tests (tests/many_cpus.rs, tests/many_cpu_caches.rs) take a
# CPU offline here and may not skip.
export RESTARTABLE_REQUIRE_HOTPLUG=1
