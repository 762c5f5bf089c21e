#!/bin/sh
# A CIS-inspired baseline that keeps the node working as an EKS worker.
set -eu

# Kernel: no source routing or redirects, log martians, restrict dmesg and ptrace.
cat > /etc/sysctl.d/90-hardening.conf <<'SYSCTL'
net.ipv4.conf.all.accept_redirects = 0
net.ipv4.conf.default.accept_redirects = 0
net.ipv4.conf.all.send_redirects = 0
net.ipv4.conf.all.accept_source_route = 0
net.ipv4.conf.all.log_martians = 1
net.ipv6.conf.all.accept_redirects = 0
kernel.dmesg_restrict = 1
kernel.kptr_restrict = 2
kernel.yama.ptrace_scope = 1
fs.suid_dumpable = 0
SYSCTL

# SSH: keys only, no root login (nodes are reached through SSM Session Manager).
cat > /etc/ssh/sshd_config.d/90-hardening.conf <<'SSHD'
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
X11Forwarding no
MaxAuthTries 3
SSHD

# Unused filesystems.
for fs in cramfs freevxfs hfs hfsplus jffs2 squashfs udf; do
  echo "install $fs /bin/false" >> /etc/modprobe.d/90-hardening.conf
done

# Audit changes to identity and sudo configuration.
cat > /etc/audit/rules.d/90-hardening.rules <<'AUDIT'
-w /etc/passwd -p wa -k identity
-w /etc/group -p wa -k identity
-w /etc/shadow -p wa -k identity
-w /etc/sudoers -p wa -k scope
-w /etc/sudoers.d/ -p wa -k scope
AUDIT
systemctl enable auditd

# File integrity baseline.
aide --init && mv /var/lib/aide/aide.db.new.gz /var/lib/aide/aide.db.gz
