//go:build tools

// Package tools pins the actionlint command that the test command builds.
package tools

import _ "github.com/rhysd/actionlint/cmd/actionlint"
