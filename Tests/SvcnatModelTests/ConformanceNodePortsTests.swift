import NFTModel
import SvcnatCore
import SvcnatExplain
import SvcnatModel
import SvcnatSources
import Testing

extension Conformance {
    /// kube-proxy's TestNodePorts (pkg/proxy/nftables/proxier_test.go): a NodePort Service with
    /// two endpoints, each family, under kube-proxy's fake proxier's --nodeport-addresses
    /// (its primary node IPs, 192.168.0.2/32 and 2001:db8::1/128) and under a list that also
    /// holds the alternate node IP. Four flows each: pod to ClusterIP, external and node to the
    /// node port on the primary IP, and external to the node port on the alternate IP, which
    /// only the second list serves ("" in kube-proxy's table: not NATed, the host's own).
    @Test(arguments: [
        ("ipv4", IPFamily.v4, [String]?.none, false),
        ("ipv4, multiple nodeport-addresses", .v4, ["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"], true),
        ("ipv6", .v6, nil, false),
        ("ipv6, multiple nodeport-addresses", .v6, ["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64", "2001:db8:1::2/128"], true)
    ])
    func testNodePorts(_ name: String, _ family: IPFamily, _ nodePortAddresses: [String]?, _ allowAltNodeIP: Bool) throws {
        let c = try NodePortsCase(family)
        let (svcIP, nodeIP, altNodeIP, podIP, external, both) = (c.svcIP, c.nodeIP, c.altNodeIP, c.podIP, c.external, c.both)
        let config = ProxyConfig(
            clusterCIDRs: [IPPrefix("10.0.0.0/8")!, IPPrefix("fd00:10::/64")!], nodeName: "test-node",
            nodePortAddresses: (nodePortAddresses ?? ["192.168.0.2/32", "2001:db8::1/128"]).map { IPPrefix($0)! })
        let table = try #require(try Reconciler.desiredTables(c.state, config: config).first { $0.family == family })
        var flows = [
            Flow(name: "pod to cluster IP", source: podIP, destination: svcIP, port: 80, output: both, masq: false),
            Flow(name: "external to nodePort", source: external, destination: nodeIP, port: 3001, output: both, masq: true),
            Flow(name: "node to nodePort", source: nodeIP, destination: nodeIP, port: 3001, output: both, masq: true)
        ]
        flows.append(
            allowAltNodeIP
                ? Flow(
                    name: "external to nodePort on secondary IP", source: external, destination: altNodeIP, port: 3001, output: both,
                    masq: true)
                : Flow(
                    name: "secondary nodeIP ignores NodePorts", source: external, destination: altNodeIP, port: 3001, output: "",
                    masq: false))
        let wrong = Self.disagreements(table.ruleset, flows, local: Self.nodeIPsBothFamilies, notNATed: "")
        #expect(wrong.isEmpty, "\(name):\n\(Self.lines(wrong, flows))")
    }

    /// kube-proxy's testNodeIPs, both families.
    static let nodeIPsBothFamilies = Set(
        ["192.168.0.2", "192.168.1.2", "192.168.99.11", "2001:db8::1", "2001:db8:1::2"].map { IPAddress($0)! })
}

extension Conformance {
    /// The flows over kube-proxy's TestOverallNFTablesRules Services (its fake proxier's
    /// settings: pod CIDR 10.0.0.0/8, service CIDR 172.30.0.0/16, node ports on 192.168.0.2/32),
    /// and its svc5's ClientIP affinity as kube-proxy writes it: one remembered-client set per
    /// endpoint with its 10800 s timeout.
    @Test func testOverallNFTablesRulesFlows() throws {
        let config = ProxyConfig(
            clusterCIDRs: [IPPrefix("10.0.0.0/8")!], nodeName: "test-node", nodePortAddresses: [IPPrefix("192.168.0.2/32")!],
            serviceCIDRs: [IPPrefix("172.30.0.0/16")!])
        let input = try ManifestSource.load([Self.dir + "/TestOverallNFTablesRules.yaml"])
        let r = try Reconciler.desired(input.state, config: config).1
        let flows = try Self.flows("TestOverallNFTablesRules")
        #expect(flows.count == 28)
        let d = Self.disagreements(r, flows, notNATed: "")
        #expect(d.isEmpty, "\(Self.lines(d, flows))")
        let text = r.nftText
        // kube-proxy: add set affinity-...-ns5/svc5/tcp/p80__10.180.0.3/80 { type ipv4_addr ; flags
        // dynamic,timeout ; timeout 10800s ; }, an update of it in the endpoint chain and a
        // lookup of it in the service chain before the random choice.
        let set = "aff-ns5/svc5/tcp/p80__10.180.0.3/80"
        #expect(text.contains("set \(set) {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 10800s\n"), "\(text)")
        #expect(text.contains("update @\(set) { ip saddr }"))
        #expect(text.contains("ip saddr @\(set) goto ep-ns5/svc5/tcp/p80__10.180.0.3/80"))
        #expect(!text.contains("set aff-ns1/"), "only svc5 has affinity")
    }
}

/// kube-proxy's TestNodePorts Service (a NodePort, 3001) and its two endpoints, one on this
/// node, in one family; both its nftables and its iptables test use them, with these addresses.
struct NodePortsCase {
    let svcIP, ep1, ep2, nodeIP, altNodeIP, podIP, external, localhost: String
    /// Both endpoints, as the walk names them.
    let both: String
    let state: ClusterState

    init(_ family: IPFamily) throws {
        let v4 = family == .v4
        (svcIP, ep1, ep2) = v4 ? ("172.30.0.41", "10.180.0.1", "10.180.2.1") : ("fd00:172:30::41", "fd00:10:180::1", "fd00:10:180::2:1")
        (nodeIP, altNodeIP, localhost) = v4 ? ("192.168.0.2", "192.168.1.2", "127.0.0.1") : ("2001:db8::1", "2001:db8:1::2", "::1")
        (podIP, external) = v4 ? ("10.0.0.2", "203.0.113.2") : ("fd00:10::2", "2600:5200::1")
        both = v4 ? "\(ep1):80, \(ep2):80" : "[\(ep1)]:80, [\(ep2)]:80"
        var d = ManifestDecoder()
        d.decode(
            """
            apiVersion: v1
            kind: Service
            metadata: {name: svc1, namespace: ns1}
            spec:
              type: NodePort
              clusterIP: \(svcIP)
              ipFamilies: [\(v4 ? "IPv4" : "IPv6")]
              ports: [{name: p80, port: 80, protocol: TCP, nodePort: 3001}]
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {name: svc1-1, namespace: ns1, labels: {kubernetes.io/service-name: svc1}}
            addressType: \(v4 ? "IPv4" : "IPv6")
            endpoints: [{addresses: ["\(ep1)"]}, {addresses: ["\(ep2)"], nodeName: test-node}]
            ports: [{name: p80, port: 80, protocol: TCP}]

            """, file: "svc1.yaml")
        guard d.errors.isEmpty else { throw InputErrors(errors: d.errors) }
        state = d.state
    }
}
