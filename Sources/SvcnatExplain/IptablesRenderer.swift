import NFTModel
import SvcnatModel

/// Prints the Services the way kube-proxy's iptables mode programs them, in the form
/// `iptables-save` prints after `iptables-restore` has loaded it: kube-proxy's chain names
/// (KUBE-SVC-/KUBE-SEP- with its hash), its rule layout and its probability cascade, with
/// each probability printed as the kernel stores it. The config's family picks iptables or
/// ip6tables (`ip6tables-save` form), as kube-proxy programs each family with its own tool.
public struct IptablesRenderer: Sendable {
    public var config: TranslatorConfig
    /// kube-proxy's `KUBE-FORWARD` INVALID drop, which it installs unless the node's
    /// nf_conntrack_tcp_be_liberal is set (`--conntrack-tcp-be-liberal`). svcnat's own nft
    /// rules never drop INVALID packets, as kube-proxy's nftables mode does not.
    public var dropsInvalid: Bool
    public init(_ config: TranslatorConfig, dropsInvalid: Bool = true) {
        self.config = config
        self.dropsInvalid = dropsInvalid
    }

    public func render(_ state: ProxyState) -> String {
        let family = config.family, v4 = family == .v4
        let host = "/\(family.bits)"
        let portUnreachable = v4 ? "icmp-port-unreachable" : "icmp6-port-unreachable"
        let hostMask = v4 ? "255.255.255.255" : "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        let clusterCIDRs = config.clusterCIDRs.filter { $0.family == family }
        let nodePortAddresses = config.nodePortAddresses.filter { $0.family == family }
        var filterRules: [String] = [], natRules: [String] = []
        var natChains = Set(["KUBE-MARK-MASQ", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-SERVICES"])
        let mark = "0x" + String(config.masqueradeMark, radix: 16)

        for sp in state.servicePorts {
            let spn = sp.name, proto = spn.proto.lowercased
            let svcChain = KubeProxyNames.serviceChain(spn)
            let extChain = KubeProxyNames.externalChain(spn), fwChain = KubeProxyNames.firewallChain(spn)
            let match = { (ip: IPAddress, port: UInt16, comment: String) in
                "-d \(ip)\(host) -p \(proto) -m comment --comment \(q(comment)) -m \(proto) --dport \(port)"
            }
            if sp.endpoints.isEmpty {
                // kube-proxy rejects in the filter table: ClusterIPs in KUBE-SERVICES, the
                // externally visible frontends in KUBE-EXTERNAL-SERVICES.
                for f in sp.frontends {
                    let chain = f.kind == .clusterIP ? "KUBE-SERVICES" : "KUBE-EXTERNAL-SERVICES"
                    filterRules.append(
                        "-A \(chain) \(match(f.ip, f.port, "\(spn) has no endpoints")) -j REJECT --reject-with \(portUnreachable)")
                }
                if let np = sp.nodePort {
                    filterRules.append(
                        "-A KUBE-EXTERNAL-SERVICES -p \(proto) -m comment --comment \(q("\(spn) has no endpoints")) -m addrtype "
                            + "--dst-type LOCAL -m \(proto) --dport \(np) -j REJECT --reject-with \(portUnreachable)"
                    )
                }
                continue
            }
            natChains.insert(svcChain)
            let external = !sp.externalFrontends.isEmpty || sp.nodePort != nil
            if external {
                natChains.insert(extChain)
                natRules.append(
                    "-A \(extChain) -m comment --comment \(q("masquerade traffic for \(spn) external destinations")) -j KUBE-MARK-MASQ")
                natRules.append("-A \(extChain) -j \(svcChain)")
            }
            for f in sp.frontends {
                switch f.kind {
                case .clusterIP:
                    natRules.append("-A KUBE-SERVICES \(match(f.ip, f.port, "\(spn) cluster IP")) -j \(svcChain)")
                    let masq = config.masqueradeAll ? [""] : clusterCIDRs.map { "! -s \($0) " }
                    for m in masq {
                        natRules.append("-A \(svcChain) \(m)\(match(f.ip, f.port, "\(spn) cluster IP")) -j KUBE-MARK-MASQ")
                    }
                case .externalIP:
                    natRules.append("-A KUBE-SERVICES \(match(f.ip, f.port, "\(spn) external IP")) -j \(extChain)")
                case .loadBalancer:
                    if sp.sourceRanges.isEmpty {
                        natRules.append("-A KUBE-SERVICES \(match(f.ip, f.port, "\(spn) loadbalancer IP")) -j \(extChain)")
                    } else {
                        // Allowed sources go on; the rest are not DNATed and the filter table drops them.
                        natChains.insert(fwChain)
                        natRules.append("-A KUBE-SERVICES \(match(f.ip, f.port, "\(spn) loadbalancer IP")) -j \(fwChain)")
                        for r in sp.sourceRanges {
                            natRules.append("-A \(fwChain) -s \(r) -m comment --comment \(q("\(spn) loadbalancer IP")) -j \(extChain)")
                        }
                        filterRules.append(
                            "-A KUBE-PROXY-FIREWALL \(match(f.ip, f.port, "\(spn) traffic not accepted by \(fwChain)")) -j DROP")
                    }
                }
            }
            if let np = sp.nodePort {
                natRules.append(
                    "-A KUBE-NODEPORTS -p \(proto) -m comment --comment \(q(spn.description)) -m \(proto) --dport \(np) -j \(extChain)")
            }
            let n = sp.endpoints.count
            if let t = sp.affinityTimeout {
                // kube-proxy's ClientIP affinity: the recent match remembers each client per endpoint.
                for ep in sp.endpoints {
                    let sep = KubeProxyNames.endpointChain(spn, ep)
                    natRules.append(
                        "-A \(svcChain) -m comment --comment \(q("\(spn) -> \(ep)")) -m recent --rcheck --seconds \(t) --reap "
                            + "--name \(sep) --mask \(hostMask) --rsource -j \(sep)"
                    )
                }
            }
            for (i, ep) in sp.endpoints.enumerated() {
                let sep = KubeProxyNames.endpointChain(spn, ep)
                natChains.insert(sep)
                let prob = i < n - 1 ? " -m statistic --mode random --probability \(Self.storedProbability(n - i))" : ""
                natRules.append("-A \(svcChain) -m comment --comment \(q("\(spn) -> \(ep)"))\(prob) -j \(sep)")
                natRules.append("-A \(sep) -s \(ep.ip)\(host) -m comment --comment \(q(spn.description)) -j KUBE-MARK-MASQ")
                let recent = sp.affinityTimeout == nil ? "" : " -m recent --set --name \(sep) --mask \(hostMask) --rsource"
                natRules.append(
                    "-A \(sep) -p \(proto) -m comment --comment \(q(spn.description))\(recent) -m \(proto) -j DNAT --to-destination \(ep)")
            }
        }
        let nodePortNote = q("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
        if nodePortAddresses.isEmpty {
            natRules.append("-A KUBE-SERVICES -m comment --comment \(nodePortNote) -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
        } else {
            for c in nodePortAddresses {
                natRules.append("-A KUBE-SERVICES -d \(c) -m comment --comment \(nodePortNote) -j KUBE-NODEPORTS")
            }
        }

        let filterChains = [
            "KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL", "KUBE-SERVICES"
        ]
        let fixedFilter = """
            -A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
            -A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
            -A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" \
            -j KUBE-EXTERNAL-SERVICES
            -A INPUT -j KUBE-FIREWALL
            -A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
            -A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
            -A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
            -A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" \
            -j KUBE-EXTERNAL-SERVICES
            -A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
            -A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
            -A OUTPUT -j KUBE-FIREWALL
            \(dropsInvalid ? "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n" : "")\
            -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark \(mark)/\(mark) -j ACCEPT
            -A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
            """
        let fixedNat = """
            -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
            -A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
            -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
            -A KUBE-MARK-MASQ -j MARK --set-xmark \(mark)/\(mark)
            -A KUBE-POSTROUTING -m mark ! --mark \(mark)/\(mark) -j RETURN
            -A KUBE-POSTROUTING -j MARK --set-xmark \(mark)/0x0
            -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
            """
        // route_localnet (and so this guard) is IPv4's alone.
        let localnet =
            v4
            ? [
                "-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -m "
                    + "conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
            ] : []
        var out = "# svcnat: the kube-proxy \(v4 ? "iptables" : "ip6tables")-mode equivalent of the same Services\n*filter\n"
        out += ":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        out += filterChains.map { ":\($0) - [0:0]\n" }.joined()
        out += Self.byChain(
            fixedFilter.split(separator: "\n").map(String.init) + localnet + filterRules,
            order: ["INPUT", "FORWARD", "OUTPUT"] + filterChains)
        out += "COMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
        out += natChains.sorted().map { ":\($0) - [0:0]\n" }.joined()
        out += Self.byChain(
            fixedNat.split(separator: "\n").map(String.init) + natRules,
            order: ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] + natChains.sorted())
        out += "COMMIT\n"
        return out
    }

    /// iptables-save prints a table's rules chain by chain, in the order the chains are listed;
    /// within a chain, in the order they were added.
    static func byChain(_ rules: [String], order: [String]) -> String {
        var grouped: [String: [String]] = [:]
        for r in rules { grouped[String(r.split(separator: " ")[1]), default: []].append(r) }
        return order.compactMap { grouped[$0] }.joined().map { $0 + "\n" }.joined()
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
