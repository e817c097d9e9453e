package attest

// The attestation-agent client's generated code is committed; regenerate
// after changing the .proto with protoc, protoc-gen-go and
// protoc-gen-go-ttrpc on PATH (go generate ./attest).
//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-ttrpc_out=. --go-ttrpc_opt=paths=source_relative aapb/attestation_agent.proto
