/// Prints the Services the way kube-proxy's iptables mode programs them, in the form
/// `iptables-save` prints after `iptables-restore` has loaded it: kube-proxy's chain names
/// (KUBE-SVC-/KUBE-SEP- with its hash), its rule layout and its probability cascade, with
/// each probability printed as the kernel stores it.
public struct IptablesRenderer: Sendable {
    public var config: TranslatorConfig
    public init(_ config: TranslatorConfig) { self.config = config }

    public func render(_ state: ProxyState) -> String {
        var filterRules: [String] = [], natRules: [String] = []
        var natChains = Set(["KUBE-MARK-MASQ", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-SERVICES"])
        let mark = "0x" + String(config.masqueradeMark, radix: 16)

        for sp in state.servicePorts {
            let spn = sp.name, proto = spn.proto.lowercased
            for f in sp.frontends {
                if sp.endpoints.isEmpty {
                    filterRules.append("-A KUBE-SERVICES -d \(f.ip)/32 -p \(proto) -m comment --comment \(q("\(spn) has no endpoints")) -m \(proto) --dport \(f.port) -j REJECT --reject-with icmp-port-unreachable")
                    continue
                }
                let svcChain = KubeProxyNames.serviceChain(spn)
                natChains.insert(svcChain)
                natRules.append("-A KUBE-SERVICES -d \(f.ip)/32 -p \(proto) -m comment --comment \(q("\(spn) cluster IP")) -m \(proto) --dport \(f.port) -j \(svcChain)")
                let masq = config.masqueradeAll ? [""] : config.clusterCIDRs.map { "! -s \($0) " }
                for m in masq {
                    natRules.append("-A \(svcChain) \(m)-d \(f.ip)/32 -p \(proto) -m comment --comment \(q("\(spn) cluster IP")) -m \(proto) --dport \(f.port) -j KUBE-MARK-MASQ")
                }
                let n = sp.endpoints.count
                for (i, ep) in sp.endpoints.enumerated() {
                    let sep = KubeProxyNames.endpointChain(spn, ep)
                    natChains.insert(sep)
                    let prob = i < n - 1 ? " -m statistic --mode random --probability \(Self.storedProbability(n - i))" : ""
                    natRules.append("-A \(svcChain) -m comment --comment \(q("\(spn) -> \(ep)"))\(prob) -j \(sep)")
                    natRules.append("-A \(sep) -s \(ep.ip)/32 -m comment --comment \(q(spn.description)) -j KUBE-MARK-MASQ")
                    natRules.append("-A \(sep) -p \(proto) -m comment --comment \(q(spn.description)) -m \(proto) -j DNAT --to-destination \(ep)")
                }
            }
        }
        natRules.append("-A KUBE-SERVICES -m comment --comment \(q("kubernetes service nodeports; NOTE: this must be the last rule in this chain")) -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")

        var out = "# svcnat: the kube-proxy iptables-mode equivalent of the same Services\n*filter\n"
        out += ":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        for c in ["KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL", "KUBE-SERVICES"] {
            out += ":\(c) - [0:0]\n"
        }
        out += """
        -A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
        -A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
        -A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
        -A INPUT -j KUBE-FIREWALL
        -A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
        -A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
        -A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
        -A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
        -A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
        -A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
        -A OUTPUT -j KUBE-FIREWALL
        -A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
        -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark \(mark)/\(mark) -j ACCEPT
        -A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT

        """
        out += filterRules.map { $0 + "\n" }.joined()
        out += "COMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
        out += natChains.sorted().map { ":\($0) - [0:0]\n" }.joined()
        out += """
        -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
        -A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
        -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
        -A KUBE-MARK-MASQ -j MARK --set-xmark \(mark)/\(mark)
        -A KUBE-POSTROUTING -m mark ! --mark \(mark)/\(mark) -j RETURN
        -A KUBE-POSTROUTING -j MARK --set-xmark \(mark)/0x0
        -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully

        """
        // iptables-save prints a table's rules chain by chain; kube-proxy writes each chain's
        // rules together, in the order above.
        var byChain: [String: [String]] = [:]
        for r in natRules {
            let chain = String(r.split(separator: " ")[1])
            byChain[chain, default: []].append(r)
        }
        for c in natChains.sorted() where byChain[c] != nil { out += byChain[c]!.map { $0 + "\n" }.joined() }
        out += "COMMIT\n"
        return out
    }

    /// kube-proxy writes 1/n with ten decimals; xt_statistic stores round(2^31 * p) and
    /// iptables-save prints that back with eleven.
    public static func storedProbability(_ n: Int) -> String {
        let written = (1.0 / Double(n) * 1e10).rounded() / 1e10
        let stored = (written * 2147483648.0).rounded()
        let printed = stored / 2147483648.0
        let scaled = Int64((printed * 1e11).rounded())
        let frac = String(scaled % 100_000_000_000)
        return "\(scaled / 100_000_000_000)." + String(repeating: "0", count: 11 - frac.count) + frac
    }

    /// iptables-save (the nft variant Debian ships) prints every comment quoted.
    private func q(_ s: String) -> String { quoted(s) }
}
