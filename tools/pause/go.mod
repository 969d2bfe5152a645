// Module of the e2e node's sandbox (pause) program; standard library only.
module backend-injector/tools/pause

go 1.26.0
