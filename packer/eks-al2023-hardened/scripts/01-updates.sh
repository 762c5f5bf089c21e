#!/bin/sh
# Security updates only; the EKS components (kubelet, containerd) stay at the base AMI's versions.
set -eu
dnf -y upgrade --security --releasever=latest
dnf -y install audit aide
