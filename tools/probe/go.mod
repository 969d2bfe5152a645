// Module of the e2e node's smoke-test program; standard library only.
module backend-injector/tools/probe

go 1.26.0
