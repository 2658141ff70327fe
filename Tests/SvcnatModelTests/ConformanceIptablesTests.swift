import NFTModel
import SvcnatCore
import SvcnatExplain
import SvcnatModel
import SvcnatSources
import Testing

/// kube-proxy's iptables tests that check one chain or a few flows (pkg/proxy/iptables/
/// proxier_test.go): TestDropInvalidRule, TestMasqueradeRule, TestNodePorts. Chains are
/// compared after Conformance's normalisation; flows go through svcnat's nft ruleset (what
/// the kernel runs), the iptables view being only a rendering of the same decisions.
extension Conformance {
    /// The rules of one chain of svcnat's --format iptables, normalised.
    static func chain(_ text: String, _ name: String) -> [[String]] { dump(text).rules[name] ?? [] }

    static func emptyState() -> ClusterState {
        var d = ManifestDecoder()
        d.decode("", file: "none.yaml")
        return d.state
    }

    /// Its three cases: the INVALID drop first in KUBE-FORWARD unless the node's conntrack is
    /// TCP-liberal (--conntrack-tcp-be-liberal); the nfacct-counted form is the plain one after
    /// the normalisation (nfacct counters are an optional kube-proxy metric).
    @Test(arguments: [
        (false, "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"),
        (false, "-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP"),
        (true, "")
    ])
    func testDropInvalidRule(_ tcpLiberal: Bool, _ dropRule: String) throws {
        let want =
            [dropRule].filter { !$0.isEmpty } + [
                #"-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT"#,
                #"-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"#
            ]
        let config = ProxyConfig(clusterCIDRs: [IPPrefix("10.0.0.0/8")!], nodeName: "test-node")
        let proxy = try Reconciler.desired(Self.emptyState(), config: config).0
        let got = IptablesRenderer(config.translator, dropsInvalid: !tcpLiberal).render(proxy)
        #expect(Self.chain(got, "filter/KUBE-FORWARD") == Self.chain("*filter\n" + want.joined(separator: "\n"), "filter/KUBE-FORWARD"))
    }

    /// Both cases (with and without --random-fully) are one after the normalisation: svcnat
    /// always asks for random-fully, which every kernel it runs on has.
    @Test(arguments: ["", " --random-fully"])
    func testMasqueradeRule(_ randomFully: String) throws {
        let want = """
            *nat
            -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
            -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
            -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE\(randomFully)
            """
        let config = ProxyConfig(clusterCIDRs: [IPPrefix("10.0.0.0/8")!], nodeName: "test-node")
        let got = IptablesRenderer(config.translator).render(try Reconciler.desired(Self.emptyState(), config: config).0)
        #expect(Self.chain(got, "nat/KUBE-POSTROUTING") == Self.chain(want, "nat/KUBE-POSTROUTING"))
        #expect(Self.chain(got, "nat/KUBE-POSTROUTING").count == 3)
    }

    /// Its seven cases. kube-proxy's "localhost to nodePort gets masqueraded" (IPv4 with
    /// --iptables-localhost-nodeports, its iptables default) is the deliberate difference:
    /// svcnat never serves node ports on 127.0.0.0/8, so there that flow is "" (not NATed) and
    /// KUBE-FIREWALL is empty, which is kube-proxy's own answer with localhost node ports off.
    /// A loopback CIDR in --nodeport-addresses is left out (the flag says so on standard error).
    @Test(arguments: [
        ("ipv4, localhost-nodeports enabled", IPFamily.v4, true, [String]?.none, true, true),
        ("ipv4, localhost-nodeports disabled", .v4, false, nil, true, false),
        (
            "ipv4, localhost-nodeports disabled, localhost in nodeport-addresses", .v4, false, ["192.168.0.0/24", "127.0.0.1/32"], false,
            false
        ),
        (
            "ipv4, localhost-nodeports enabled, multiple nodeport-addresses", .v4, false,
            ["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"], true, false
        ),
        ("ipv6, localhost-nodeports enabled", .v6, true, nil, true, false),
        ("ipv6, localhost-nodeports disabled", .v6, false, nil, true, false),
        (
            "ipv6, localhost-nodeports disabled, multiple nodeport-addresses", .v6, false,
            ["192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"], false, false
        )
    ])
    func testIPTablesNodePorts(
        _ name: String, _ family: IPFamily, _ localhostNodePorts: Bool, _ nodePortAddresses: [String]?, _ allowAltNodeIP: Bool,
        _ expectFirewall: Bool
    ) throws {
        let v4 = family == .v4
        let c = try NodePortsCase(family)
        let (svcIP, nodeIP, altNodeIP, podIP, external, localhost) = (c.svcIP, c.nodeIP, c.altNodeIP, c.podIP, c.external, c.localhost)
        // What --nodeport-addresses keeps of the list: every CIDR but the loopback ones.
        let kept = (nodePortAddresses ?? []).compactMap { IPPrefix($0) }.filter { !$0.address.isLoopback }
        let config = ProxyConfig(
            clusterCIDRs: [IPPrefix("10.0.0.0/8")!, IPPrefix("fd00:10::/64")!], nodeName: "test-node", nodePortAddresses: kept)
        let table = try #require(try Reconciler.desiredTables(c.state, config: config).first { $0.family == family })
        let both = c.both
        var flows = [
            Flow(name: "pod to cluster IP", source: podIP, destination: svcIP, port: 80, output: both, masq: false),
            Flow(name: "external to nodePort", source: external, destination: nodeIP, port: 3001, output: both, masq: true),
            Flow(name: "node to nodePort", source: nodeIP, destination: nodeIP, port: 3001, output: both, masq: true),
            // kube-proxy: "localhost to nodePort gets masqueraded" when v4 && localhostNodePorts.
            Flow(name: "localhost to nodePort is ignored", source: localhost, destination: localhost, port: 3001, output: "", masq: false)
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
        // KUBE-FIREWALL: kube-proxy's localnet guard exactly when it serves localhost node ports.
        let view = IptablesRenderer(config.translator(for: family)).render(table.proxy)
        #expect(Self.chain(view, "filter/KUBE-FIREWALL").isEmpty)
        #expect(view.contains(":KUBE-FIREWALL - [0:0]"))
        // kube-proxy wants the guard exactly in the cases that serve localhost node ports, the
        // deliberate difference: nothing else is set aside.
        #expect(expectFirewall == (v4 && localhostNodePorts))
    }
}

extension Conformance {
    /// kube-proxy's TestSyncProxyRulesRepeated: nine syncs of a changing cluster. kube-proxy
    /// writes only what changed (iptables-restore --noflush: a declared chain is flushed and
    /// rewritten, `-X` deletes one, the rest stay), so each of its expected inputs is applied,
    /// in order, to the chains the steps before left; what that leaves must be, rule by rule,
    /// svcnat's whole --format iptables view of the same cluster (Conformance's normalisation,
    /// the localhost guard set aside as there).
    @Test func testSyncProxyRulesRepeated() throws {
        // Each step's cluster (a deleted Service's slice stays, as in kube-proxy's test).
        let clusters = try String(contentsOfFile: Self.dir + "/TestSyncProxyRulesRepeated.yaml", encoding: .utf8)
            .components(separatedBy: "\n#### step ").dropFirst().map { String($0.drop { $0 != "\n" }) }
        let text = try String(contentsOfFile: Self.dir + "/TestSyncProxyRulesRepeated.iptables", encoding: .utf8)
        let inputs = text.components(separatedBy: "\n## step ").dropFirst()
        #expect(inputs.count == clusters.count)
        var kernel = RestoredTables()
        var chainsWritten: [Int] = []
        for (i, (input, cluster)) in zip(inputs, clusters).enumerated() {
            chainsWritten.append(kernel.restore(input))
            var d = ManifestDecoder()
            d.decode(cluster, file: "step\(i + 1).yaml")
            #expect(d.errors.isEmpty, "\(d.errors)")
            let config = ProxyConfig(clusterCIDRs: [IPPrefix("10.0.0.0/8")!], nodeName: "test-node")
            let got = IptablesRenderer(config.translator).render(try Reconciler.desiredTables(d.state, config: config)[0].proxy)
            let want = kernel.text.split(separator: "\n").filter { !Self.localhostNodePorts(String($0)) }.joined(separator: "\n")
            let diff = Self.differences(want, got)
            #expect(diff.isEmpty, "step \(i + 1) (\(input.prefix { $0 != "\n" })):\n\(diff.joined(separator: "\n"))")
        }
        // The steps are partial: after the first, kube-proxy rewrote only the chains that changed
        // (the fixed ones and each step's own), so the comparison tests what it left standing too.
        #expect(chainsWritten == [14, 12, 12, 10, 12, 13, 13, 10, 17], "\(chainsWritten)")
    }
}

/// The chains of iptables tables as `iptables-restore --noflush` leaves them (only what this
/// comparison needs: declared chains flushed, rules appended, `-X` deletes).
struct RestoredTables {
    var chains: [String: [String]] = [:]
    var order: [String] = []

    /// Applies one restore input; returns how many chains it declared.
    mutating func restore(_ input: String) -> Int {
        var table = "", declared = 0
        for line in input.split(separator: "\n") where !line.hasPrefix("#") {
            if line.hasPrefix("*") {
                table = String(line.dropFirst())
            } else if line.hasPrefix(":") {
                let key = table + "/" + line.dropFirst().split(separator: " ")[0]
                if chains[key] == nil { order.append(key) }
                chains[key] = []
                declared += 1
            } else if line.hasPrefix("-A ") {
                chains[table + "/" + line.split(separator: " ")[1], default: []].append(String(line))
            } else if line.hasPrefix("-X ") {
                let key = table + "/" + line.split(separator: " ")[1]
                chains[key] = nil
                order.removeAll { $0 == key }
            }
        }
        return declared
    }

    /// As iptables-save would print them.
    var text: String {
        var out = ""
        for t in ["filter", "nat"] {
            out += "*\(t)\n"
            let keys = order.filter { $0.hasPrefix(t + "/") }
            for k in keys { out += ":\(k.dropFirst(t.count + 1)) - [0:0]\n" }
            for k in keys { out += chains[k]!.map { $0 + "\n" }.joined() }
            out += "COMMIT\n"
        }
        return out
    }
}
