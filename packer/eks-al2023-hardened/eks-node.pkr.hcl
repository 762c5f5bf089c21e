# A hardened Amazon EKS node AMI (Amazon Linux 2023), built on top of the EKS-optimized AMI that
# the PackerBuilder found. The operator passes `ami_id` (the base AMI) and `region`.

packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = "~> 1.3"
    }
  }
}

variable "ami_id" {
  type        = string
  description = "The base AMI (injected by the operator from the PackerBuilder's amiFilters)."
  validation {
    condition     = can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "The ami_id must look like ami-0123456789abcdef0."
  }
}

variable "region" {
  type        = string
  description = "The region to build in (injected by the operator)."
}

variable "instance_type" {
  type    = string
  default = "m6i.large"
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet of the build instance; empty picks the default VPC."
}

variable "name_prefix" {
  type    = string
  default = "eks-al2023-hardened"
}

variable "kms_key_id" {
  type        = string
  default     = ""
  description = "KMS key for the root volume; empty uses the account's default EBS key."
}

locals {
  timestamp = formatdate("YYYYMMDDhhmmss", timestamp())
}

source "amazon-ebs" "eks_node" {
  region        = var.region
  source_ami    = var.ami_id
  instance_type = var.instance_type
  subnet_id     = var.subnet_id != "" ? var.subnet_id : null
  ssh_username  = "ec2-user"
  ssh_interface = "session_manager"
  communicator  = "ssh"
  iam_instance_profile = "packer-ssm"

  ami_name        = "${var.name_prefix}-${local.timestamp}"
  ami_description = "Hardened EKS node (AL2023) built from ${var.ami_id}"
  encrypt_boot    = true
  kms_key_id      = var.kms_key_id != "" ? var.kms_key_id : null
  imds_support    = "v2.0"

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 2
  }

  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_size           = 30
    volume_type           = "gp3"
    encrypted             = true
    delete_on_termination = true
  }

  # `opsy-packer-build = true` on everything the build creates: deploy/iam/packer-job.json lets
  # the build launch, stop and terminate only instances and volumes so tagged, image and
  # snapshot only those, and deregister or delete only images and snapshots so tagged. Packer
  # also tags its temporary key pair and security group with run_tags when it creates them:
  # the build may create them only so tagged, and open or delete no other group or key pair.
  run_tags = {
    Name                = "packer-${var.name_prefix}"
    "opsy-packer-build" = "true"
  }
  run_volume_tags = {
    "opsy-packer-build" = "true"
  }
  snapshot_tags = {
    "opsy-packer-build" = "true"
  }
  # The operator adds the contract's tags (status, base-ami, build-id, …) after the build; the
  # build role may write none of them. `opsy-build-base-ami` lets the operator find this AMI
  # should the Job be gone before it read the result.
  tags = {
    "opsy-build-base-ami" = var.ami_id
    "opsy-packer-build"   = "true"
  }
}

build {
  sources = ["source.amazon-ebs.eks_node"]

  provisioner "shell" {
    execute_command = "sudo -E sh -eu '{{ .Path }}'"
    scripts = [
      "scripts/01-updates.sh",
      "scripts/02-harden.sh",
      "scripts/99-cleanup.sh",
    ]
  }

  post-processor "manifest" {
    output     = "manifest.json"
    strip_path = true
  }
}
