#!/usr/bin/env bash
# Regenerates the committed Swift code for our .proto files.
#
# Needs: protoc (Debian: protobuf-compiler libprotobuf-dev) and the two Swift plugins,
# built once from the package versions Package.swift uses:
#   swift-protobuf 1.39.0        -> protoc-gen-swift
#   grpc-swift-protobuf 2.4.1    -> protoc-gen-grpc-swift-2
# This script builds them into $LM_TOOLS (default /opt/lm-tools) when missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools=${LM_TOOLS:-/opt/lm-tools}

build_plugin() { # repo tag product
  local dir="$tools/$(basename "$1" .git)"
  if [ ! -x "$dir/.build/release/$3" ]; then
    echo "building $3 from $1 $2 (about 2 minutes)" >&2
    mkdir -p "$tools"
    [ -d "$dir" ] || git clone -q --branch "$2" "$1" "$dir"
    (cd "$dir" && swift build -c release --product "$3" >&2)
  fi
  echo "$dir/.build/release/$3"
}
command -v protoc >/dev/null || { echo "protoc missing: apt-get install -y protobuf-compiler libprotobuf-dev" >&2; exit 1; }
swift_plugin=$(build_plugin https://github.com/apple/swift-protobuf.git 1.39.0 protoc-gen-swift)
grpc_plugin=$(build_plugin https://github.com/grpc/grpc-swift-protobuf.git 2.4.1 protoc-gen-grpc-swift-2)

gen() { # output-dir proto files...
  local out="$root/Sources/$1"; shift
  rm -f "$out"/*.pb.swift "$out"/*.grpc.swift
  mkdir -p "$out"
  protoc --proto_path="$root/Protos" --proto_path=/usr/include \
    --plugin=protoc-gen-swift="$swift_plugin" --plugin=protoc-gen-grpc-swift-2="$grpc_plugin" \
    --swift_out="$out" --swift_opt=Visibility=Public,FileNaming=PathToUnderscores \
    --grpc-swift-2_out="$out" \
    --grpc-swift-2_opt=Visibility=Public,FileNaming=PathToUnderscores,Client=true,Server=true \
    "$@"
}
cd "$root/Protos"
gen FlintlockAPI flintlock/types/microvm.proto flintlock/services/microvm/v1alpha1/microvms.proto liquidmetal/agent/v1/agent.proto
gen ContainerdAPI containerd/*.proto
echo "generated into Sources/FlintlockAPI and Sources/ContainerdAPI" >&2
