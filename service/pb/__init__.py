"""Generated gRPC/protobuf code for `protos/priorlab/v1/*.proto` (`make protos`; not in git).

protoc names modules after the proto path (`priorlab.v1`); the Makefile rewrites those imports
to `service.pb.priorlab.v1` so the generated package needs no sys.path changes.
"""
