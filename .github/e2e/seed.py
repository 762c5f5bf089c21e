"""Seed the in-cluster AWS emulator for the end-to-end workflow.

    seed.py amis            print a MOTO_AMIS_PATH file: EKS AL2023 1.30 AMIs, the newest made now
    seed.py cluster URL     create the upstream example's cluster (ibeify-gitops) with three managed
                            node groups on launch templates, one of them the excluded ingress-dev
"""

import datetime
import json
import sys

EKS_OWNER = "602401143452"
REGION = "us-west-2"
CLUSTER = "ibeify-gitops"


def amis() -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    images = []
    for i, days in enumerate([60, 30, 0]):
        created = now - datetime.timedelta(days=days)
        images.append({
            "ami_id": f"ami-0e2e0000000000{i:03d}",
            "name": f"amazon-eks-node-al2023-x86_64-standard-1.30-v{created:%Y%m%d}",
            "description": "EKS Kubernetes Worker AMI",
            "owner_id": EKS_OWNER,
            "public": True,
            "virtualization_type": "hvm",
            "architecture": "x86_64",
            "state": "available",
            "platform": None,
            "image_type": "machine",
            "hypervisor": "xen",
            "root_device_name": "/dev/xvda",
            "root_device_type": "ebs",
            "sriov": "simple",
            "creation_date": created.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "tags": {},
        })
    json.dump(images, sys.stdout, indent=2)


def cluster(url: str) -> None:
    import boto3

    session = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION)
    ec2 = session.client("ec2", endpoint_url=url)
    eks = session.client("eks", endpoint_url=url)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    role = f"arn:aws:iam::123456789012:role/{CLUSTER}"
    eks.create_cluster(name=CLUSTER, version="1.30", roleArn=role, resourcesVpcConfig={"subnetIds": [subnet]})
    for group in ["general", "batch", "ingress-dev"]:
        template = ec2.create_launch_template(
            LaunchTemplateName=f"{CLUSTER}-{group}",
            LaunchTemplateData={"ImageId": "ami-0e2e0000000000000", "InstanceType": "m6i.large"},
        )["LaunchTemplate"]
        eks.create_nodegroup(
            clusterName=CLUSTER,
            nodegroupName=group,
            nodeRole=role,
            subnets=[subnet],
            scalingConfig={"minSize": 1, "maxSize": 3, "desiredSize": 1},
            launchTemplate={"id": template["LaunchTemplateId"], "version": "1"},
            amiType="CUSTOM",
        )
    print(f"seeded {CLUSTER} with 3 node groups at {url}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["amis"]:
        amis()
    elif sys.argv[1:2] == ["cluster"] and len(sys.argv) == 3:
        cluster(sys.argv[2])
    else:
        sys.exit(__doc__)
