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
            // kube-proxy's policy chains: KUBE-SVC- picks among the cluster endpoints, KUBE-SVL-
            // among this node's; ClusterIP traffic goes to the internal policy's chain, external
            // traffic (through KUBE-EXT-) to the external policy's. Endpoints in the order of
            // their strings, as kube-proxy sorts them.
            let svlChain = KubeProxyNames.localChain(spn)
            let byString = { (a: EndpointAddress, b: EndpointAddress) in a.description < b.description }
            let cluster = Array(sp.endpoints[sp.clusterStart...]).sorted(by: byString)
            let local = Array(sp.endpoints.prefix(sp.localEndpointCount)).sorted(by: byString)
            let external = !sp.externalFrontends.isEmpty || sp.nodePort != nil
            let usesClusterChain = !cluster.isEmpty && (!sp.internalLocal || external)
            let usesLocalChain = !local.isEmpty && (sp.internalLocal || (sp.externalLocal && external))
            let internalChain = sp.internalLocal ? svlChain : svcChain
            let externalPolicyChain = sp.externalLocal ? svlChain : svcChain
            let hasEndpoints = !sp.endpoints.isEmpty
            let hasInternal = sp.internalLocal ? !local.isEmpty : !cluster.isEmpty
            let hasExternal = sp.externalLocal ? !local.isEmpty : !cluster.isEmpty
            let usesExternalChain = hasEndpoints && external
            // Where a policy has no endpoint: REJECT when the Service has none at all, DROP when
            // only this node lacks them (kube-proxy's "has no local endpoints").
            let filterTarget = { (has: Bool) -> (String, String)? in
                if !hasEndpoints { return ("\(spn) has no endpoints", "REJECT --reject-with \(portUnreachable)") }
                return has ? nil : ("\(spn) has no local endpoints", "DROP")
            }
            if let hc = sp.healthCheckNodePort {
                filterRules.append(
                    "-A KUBE-NODEPORTS -p \(proto) -m comment --comment \(q("\(spn) health check node port")) -m \(proto) --dport \(hc) -j ACCEPT"
                )
            }
            if usesClusterChain { natChains.insert(svcChain) }
            if usesLocalChain { natChains.insert(svlChain) }
            if usesExternalChain {
                natChains.insert(extChain)
                if !sp.externalLocal {
                    natRules.append(
                        "-A \(extChain) -m comment --comment \(q("masquerade traffic for \(spn) external destinations")) -j KUBE-MARK-MASQ")
                } else {
                    // Pods and the node itself reach every endpoint; the node masqueraded.
                    for c in clusterCIDRs {
                        natRules.append(
                            "-A \(extChain) -s \(c) -m comment --comment \(q("pod traffic for \(spn) external destinations")) -j \(svcChain)"
                        )
                    }
                    natRules.append(
                        "-A \(extChain) -m comment --comment \(q("masquerade LOCAL traffic for \(spn) external destinations")) "
                            + "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ")
                    natRules.append(
                        "-A \(extChain) -m comment --comment \(q("route LOCAL traffic for \(spn) external destinations")) "
                            + "-m addrtype --src-type LOCAL -j \(svcChain)")
                }
                if hasExternal { natRules.append("-A \(extChain) -j \(externalPolicyChain)") }
            }
            for f in sp.frontends {
                switch f.kind {
                case .clusterIP:
                    if hasInternal {
                        natRules.append("-A KUBE-SERVICES \(match(f.ip, f.port, "\(spn) cluster IP")) -j \(internalChain)")
                        let masq = config.masqueradeAll ? [""] : clusterCIDRs.map { "! -s \($0) " }
                        for m in masq {
                            natRules.append("-A \(internalChain) \(m)\(match(f.ip, f.port, "\(spn) cluster IP")) -j KUBE-MARK-MASQ")
                        }
                    } else if let (comment, target) = filterTarget(hasInternal) {
                        filterRules.append("-A KUBE-SERVICES \(match(f.ip, f.port, comment)) -j \(target)")
                    }
                case .externalIP, .loadBalancer:
                    let isLB = f.kind == .loadBalancer
                    if usesExternalChain {
                        let what = isLB ? "loadbalancer IP" : "external IP"
                        if isLB && !sp.sourceRanges.isEmpty {
                            // Allowed sources go on; the rest are not DNATed and the filter table drops them.
                            natRules.append("-A KUBE-SERVICES \(match(f.ip, f.port, "\(spn) \(what)")) -j \(fwChain)")
                            // The firewall chain once per Service port, however many LB IPs jump to it.
                            if natChains.insert(fwChain).inserted {
                                for r in sp.sourceRanges {
                                    natRules.append("-A \(fwChain) -s \(r) -m comment --comment \(q("\(spn) \(what)")) -j \(extChain)")
                                }
                                for ip in Translator(config).lbSourcesAllowedFromNode(sp) {
                                    natRules.append(
                                        "-A \(fwChain) -s \(ip)\(host) -m comment --comment \(q("\(spn) \(what)")) -j \(extChain)")
                                }
                                natRules.append(
                                    "-A \(fwChain) -m comment --comment \(q("other traffic to \(spn) will be dropped by KUBE-PROXY-FIREWALL"))"
                                )
                            }
                            filterRules.append(
                                "-A KUBE-PROXY-FIREWALL \(match(f.ip, f.port, "\(spn) traffic not accepted by \(fwChain)")) -j DROP")
                        } else {
                            natRules.append("-A KUBE-SERVICES \(match(f.ip, f.port, "\(spn) \(what)")) -j \(extChain)")
                        }
                    }
                    if let (comment, target) = filterTarget(hasExternal) {
                        filterRules.append("-A KUBE-EXTERNAL-SERVICES \(match(f.ip, f.port, comment)) -j \(target)")
                    }
                }
            }
            if let np = sp.nodePort {
                if usesExternalChain {
                    natRules.append(
                        "-A KUBE-NODEPORTS -p \(proto) -m comment --comment \(q(spn.description)) -m \(proto) --dport \(np) -j \(extChain)")
                }
                if let (comment, target) = filterTarget(hasExternal) {
                    filterRules.append(
                        "-A KUBE-EXTERNAL-SERVICES -p \(proto) -m comment --comment \(q(comment)) -m addrtype --dst-type LOCAL "
                            + "-m \(proto) --dport \(np) -j \(target)")
                }
            }
            // Each policy chain's choice among its endpoints, then the endpoint chains.
            for (chain, eps, used) in [(svcChain, cluster, usesClusterChain), (svlChain, local, usesLocalChain)] where used {
                let n = eps.count
                if let t = sp.affinityTimeout {
                    // kube-proxy's ClientIP affinity: the recent match remembers each client per endpoint.
                    for ep in eps {
                        let sep = KubeProxyNames.endpointChain(spn, ep)
                        natRules.append(
                            "-A \(chain) -m comment --comment \(q("\(spn) -> \(ep)")) -m recent --rcheck --seconds \(t) --reap "
                                + "--name \(sep) --mask \(hostMask) --rsource -j \(sep)"
                        )
                    }
                }
                for (i, ep) in eps.enumerated() {
                    let prob = i < n - 1 ? " -m statistic --mode random --probability \(Self.storedProbability(n - i))" : ""
                    natRules.append(
                        "-A \(chain) -m comment --comment \(q("\(spn) -> \(ep)"))\(prob) -j \(KubeProxyNames.endpointChain(spn, ep))")
                }
            }
            var reachable: [EndpointAddress] = []
            if usesClusterChain { reachable += cluster }
            if usesLocalChain { reachable += local }
            for ep in Set(reachable).sorted(by: byString) {
                let sep = KubeProxyNames.endpointChain(spn, ep)
                natChains.insert(sep)
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
        // KUBE-FIREWALL stays empty: kube-proxy fills it with its "block incoming localnet
        // connections" guard only when it serves node ports on 127.0.0.0/8 through
        // route_localnet (--iptables-localhost-nodeports), which svcnat never does.
        var out = "# svcnat: the kube-proxy \(v4 ? "iptables" : "ip6tables")-mode equivalent of the same Services\n*filter\n"
        out += ":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        out += filterChains.map { ":\($0) - [0:0]\n" }.joined()
        out += Self.byChain(
            fixedFilter.split(separator: "\n").map(String.init) + filterRules,
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
