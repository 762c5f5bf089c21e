# Production settings of the sample build; ami_id and region come from the operator.
instance_type = "m6i.large"
name_prefix   = "eks-al2023-hardened"
