#!/bin/bash
# Issue 22 reproduction (strace counts, which `cargo xtask bench --scale`
# does not take): N namespaces, each a veth into one bridge (in a hub
# namespace), `tracer diagnose` idle for IDLE s; prints ready, CPU %, RSS,
# threads; then strace -f -c over STRACE s; then a drop in the last-made
# namespace and the time to its port_closed verdict.
# usage: [IPV6=0] scale_repro.sh N [TRACER] [IDLE] [STRACE]  (namespaces sc22-*,
# deleted on exit; IPV6=0: IPv6 off, else router solicitations flooded to
# every bridge port are a drop storm, not idling)
set -u
N=$1; BIN=${2:-target/debug/tracer}; IDLE=${3:-30}; ST=${4:-6}
P=sc22-; W=/tmp/sc22/run-$N; mkdir -p $W
cleanup() {
  [ -n "${TP:-}" ] && kill -INT $TP 2>/dev/null && sleep 1 && kill -9 $TP 2>/dev/null
  ls /run/netns | grep "^$P" | sed 's/^/netns del /' > $W/del.batch
  ip -batch $W/del.batch 2>/dev/null
}
trap cleanup EXIT
cleanup
t0=$(date +%s.%N)
{ echo "netns add ${P}hub"; for i in $(seq 1 $N); do echo "netns add ${P}$i"; done; } > $W/add.batch
ip -batch $W/add.batch
[ "${IPV6:-1}" = 0 ] && ip netns exec ${P}hub sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
{ echo "link add br0 type bridge"; echo "link set br0 up"; echo "addr add 10.22.255.254/16 dev br0"
  for i in $(seq 1 $N); do echo "link add h$i type veth peer name eth0 netns ${P}$i"; echo "link set h$i master br0 up"; done; } > $W/hub.batch
ip -n ${P}hub -batch $W/hub.batch
for i in $(seq 1 $N); do
  ip -n ${P}$i -batch - <<B
addr add 10.22.$((i/250)).$((i%250+1))/16 dev eth0
$( [ "${IPV6:-1}" = 0 ] && echo "netns exec ${P}$i sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1" )
link set eth0 up
link set lo up
B
done
echo "built $N namespaces in $(echo "$(date +%s.%N) - $t0" | bc) s"
HZ=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
rss() { awk '/VmRSS/{print $2}' /proc/$1/status; }
thr() { awk '/Threads/{print $2}' /proc/$1/status; }
s0=$(date +%s%N)
$BIN diagnose -o json > $W/out.json 2> $W/err.txt & TP=$!
until grep -q "\"ready\"" $W/out.json 2>/dev/null; do sleep 0.01; kill -0 $TP || { cat $W/err.txt; exit 1; }; done
echo "ready after $(( ($(date +%s%N) - s0)/1000000 )) ms"
sleep 5
c0=$(cpu $TP); r0=$(rss $TP); w0=$(date +%s%N)
sleep $IDLE
c1=$(cpu $TP); r1=$(rss $TP); w1=$(date +%s%N)
echo "idle CPU over ${IDLE}s: $(echo "scale=1; 100*($c1-$c0)/$HZ/(($w1-$w0)/1000000000)" | bc) %  RSS ${r0} -> ${r1} kB  threads $(thr $TP)"
timeout -s INT $ST strace -f -c -p $TP -o $W/strace.txt 2>/dev/null
echo "strace -f -c over ${ST}s:"; grep -E "statx|readlink|openat|getdents64|clone3|setns|newfstatat| total" $W/strace.txt
sleep 1
D=10.22.$((N/250)).$((N%250+1))
d0=$(date +%s%N)
ip netns exec ${P}hub bash -c "echo x > /dev/udp/$D/9999"
until grep -q '"port_closed"' $W/out.json; do sleep 0.002; [ $(( ($(date +%s%N) - d0)/1000000 )) -gt 120000 ] && break; done
echo "drop -> verdict: $(( ($(date +%s%N) - d0)/1000000 )) ms"
