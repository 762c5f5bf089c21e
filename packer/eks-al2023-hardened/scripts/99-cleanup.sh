#!/bin/sh
# Leave no build-time state in the image.
set -eu
dnf clean all
rm -rf /tmp/* /var/tmp/* /var/log/journal/* /root/.ssh/authorized_keys /home/ec2-user/.ssh/authorized_keys
: > /etc/machine-id
cloud-init clean --logs || true
