// Command coredns is CoreDNS from the published github.com/coredns/coredns module with
// only the plugins the e2e node's cluster DNS configures: the Kubernetes zone, a hosts
// entry for host.docker.internal, forwarding, caching and the health and readiness
// endpoints. CoreDNS's own main imports every plugin it ships (cloud DNS providers
// included), which would build much longer for nothing.
//
// The directive order (the order in which plugins handle a query) stays CoreDNS's own
// default list; plugins not imported here are simply never available in a Corefile.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
