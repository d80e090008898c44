#!/usr/bin/env bash
# Start a real Slurm cluster on this machine for the tests: munge, MariaDB + slurmdbd (so sacct
# works), slurmctld, and three virtual nodes n1/n2/n3 (three slurmd daemons) with two fake GPUs each:
# jobs take two, so a retry can leave out the node that failed.
# Needs root and Debian's packages; idempotent enough to re-run (daemons are restarted).
set -euo pipefail

STATE=${SLURM_CI_STATE:-/var/tmp/harness-slurm}
HOST=$(hostname)

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
fi

pkill -x slurmd 2>/dev/null || true
pkill -x slurmctld 2>/dev/null || true
pkill -x slurmdbd 2>/dev/null || true
sleep 1
rm -rf "$STATE" && mkdir -p "$STATE"/{state,log,run}

grep -q " n1 n2 n3" /etc/hosts || echo "127.0.0.1 n1 n2 n3" >> /etc/hosts

# munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
pgrep -x munged >/dev/null || su -s /bin/sh munge -c "/usr/sbin/munged --force"

# MariaDB for accounting (sacct)
pgrep -x mariadbd >/dev/null || /etc/init.d/mariadb start >/dev/null
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

# Fake GPUs: char devices Slurm can hand out as gres (no CUDA behind them).
for i in 0 1; do [ -e "$STATE/gpu$i" ] || mknod "$STATE/gpu$i" c 1 3; done

mkdir -p /etc/slurm
layout=$(slurmd -C | head -1 | grep -oE '(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' | tr '\n' ' ')
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=harnessci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MailProg=/bin/true
ReturnToService=2
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/state/spool-%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
KillWait=10
MinJobAge=300
GresTypes=gpu
NodeName=n1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17001 $layout RealMemory=6000 Gres=gpu:2 State=UNKNOWN
NodeName=n2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17002 $layout RealMemory=6000 Gres=gpu:2 State=UNKNOWN
NodeName=n3 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17003 $layout RealMemory=6000 Gres=gpu:2 State=UNKNOWN
PartitionName=ci Nodes=n1,n2,n3 Default=YES MaxTime=INFINITE State=UP
CONF
cat > /etc/slurm/gres.conf <<CONF
NodeName=n[1-3] Name=gpu File=$STATE/gpu[0-1]
CONF
cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
CONF
chmod 600 /etc/slurm/slurmdbd.conf

slurmdbd
for _ in $(seq 50); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
sacctmgr -i add cluster harnessci >/dev/null 2>&1 || true
slurmctld
slurmd -N n1
slurmd -N n2
slurmd -N n3

for _ in $(seq 100); do
  if scontrol ping 2>/dev/null | grep -q UP && [ "$(sinfo -h -o %T | sort -u)" = "idle" ]; then
    echo "slurm: up (nodes n1 n2 n3 idle; state in $STATE)"
    exit 0
  fi
  sleep 0.3
done
echo "slurm: did not come up; logs in $STATE/log" >&2
tail -n 20 "$STATE"/log/*.log >&2 || true
exit 1
