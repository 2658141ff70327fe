import Foundation
import Testing

extension RootTests.DaemonTests {
    /// kube-proxy's way of running: `--config` with a KubeProxyConfiguration as kubeadm writes
    /// it, and kube-proxy's flag spellings, give the same rules as svcnat's own flags; a bind
    /// address "" serves nothing there; a bind that fails names its flag and address.
    @Test func kubeProxysConfigAndFlagsGiveTheSameRulesAsSvcnats() throws {
        let bed = Testbed("kpconf")
        defer { bed.close() }
        let a = try bed.addNamespace("nodea"), b = try bed.addNamespace("nodeb")
        let dir = try bed.makeDirectory()
        try write(dir + "/web.yaml", nodePortManifest(pods: [1, 2, 3]))
        let kubeadm = try String(
            contentsOfFile: URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("SvcnatModelTests/Fixtures/kubeadm-kube-proxy.conf").path, encoding: .utf8)
        // kubeadm's file, with this cluster's settings and no kubeconfig (the source here is a folder).
        let config =
            kubeadm
            .replacingOccurrences(of: "  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\n", with: "  kubeconfig: \"\"\n")
            .replacingOccurrences(of: "clusterCIDR: 198.19.0.0/16", with: "clusterCIDR: 198.19.0.0/16,2001:db8:1::/48")
            .replacingOccurrences(of: "nodePortAddresses: null", with: "nodePortAddresses: [198.18.0.0/24]")
            .replacingOccurrences(
                of: "nftables:\n  masqueradeAll: false", with: "nftables:\n  masqueradeAll: true")
        let file = dir + "/../kube-proxy-config-\(bed.id).conf"
        try config.write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let viaConfig = try bed.startDaemon(
            a, ["--manifests", dir, "--config=\(file)", "--hostname-override=node-a", "--v=2", "--proxy-mode=nftables"])
        let viaFlags = try bed.startDaemon(
            b,
            [
                "--manifests", dir, "--cluster-cidr", "198.19.0.0/16", "--cluster-cidr", "2001:db8:1::/48", "--nodeport-addresses",
                "198.18.0.0/24", "--masquerade-all", "--node-name", "node-a", "--metrics-bind-address", ""
            ])
        #expect(within(5) { ruleset(bed, a).contains("198.19.3.2") } != nil, "\(viaConfig.log())")
        #expect(within(5) { ruleset(bed, b).contains("198.19.3.2") } != nil, "\(viaFlags.log())")
        #expect(ruleset(bed, a) == ruleset(bed, b))
        #expect(ruleset(bed, a).contains("return comment \"--masquerade-all\""))
        // "" serves no metrics; the health server still answers.
        #expect(try http(bed, b, "http://127.0.0.1:10249/metrics").0 == 0)
        #expect(try http(bed, b, "http://127.0.0.1:10256/livez").0 == 200)
        // A second daemon where the ports are taken: the error names the flag and the address.
        let second = try bed.startDaemon(a, ["--manifests", dir, "--metrics-bind-address", "127.0.0.1"])
        #expect(second.waitExit(seconds: 10) != nil)
        #expect(
            second.log().contains("--metrics-bind-address 127.0.0.1:10249: cannot listen there: Address already in use"), "\(second.log())")
    }
}

extension RootTests.DaemonTests {
    /// Log lines carry milliseconds, and `--logging-format json` (kube-proxy's flag) writes one
    /// JSON object per line, read back here by Foundation's JSON parser.
    @Test func logLinesHaveMillisecondsAndJSONIsOneObjectPerLine() throws {
        let bed = Testbed("logfmt")
        defer { bed.close() }
        let n = try bed.addNamespace("node")
        let dir = try bed.makeDirectory()
        try write(dir + "/web.yaml", serviceManifest(name: "web", pods: [1]))
        let text = try bed.startDaemon(n, ["--manifests", dir, "--metrics-bind-address", "", "--healthz-bind-address", ""])
        #expect(within(5) { text.log().contains("sync (") } != nil, "\(text.log())")
        let first = String(text.log().split(separator: "\n")[0])
        #expect(first.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info svcnat: "#, options: .regularExpression) != nil, "\(first)")
        text.signal(SIGTERM)
        _ = text.waitExit(seconds: 5)

        let json = try bed.startDaemon(n, ["--manifests", dir, "--logging-format=json", "--metrics-bind-address", ""])
        #expect(within(5) { json.log().contains("sync (") } != nil, "\(json.log())")
        let lines = json.log().split(separator: "\n")
        #expect(lines.count >= 2)
        for line in lines {
            let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(o?["ts"] is Double && o?["level"] as? String != nil && o?["msg"] as? String != nil, "\(line)")
        }
        #expect(lines.contains { $0.contains(#""msg":"sync (full, start)"#) }, "\(json.log())")
    }

    /// kube-proxy's --conntrack-tcp-be-liberal: `apply` and `run` set
    /// nf_conntrack_tcp_be_liberal in their own network namespace only; kube-proxy's INVALID
    /// drop is in --format iptables exactly while the namespace's sysctl is unset.
    @Test func conntrackTcpBeLiberalSetsItsNamespacesSysctlAndDecidesTheInvalidDrop() throws {
        let bed = Testbed("liberal")
        defer { bed.close() }
        let sysctl = ["sysctl", "-n", "net.netfilter.nf_conntrack_tcp_be_liberal"]
        let rootBefore = try run(sysctl).out
        let a = try bed.addNamespace("a"), b = try bed.addNamespace("b"), c = try bed.addNamespace("c")
        let flags = ["--cluster-cidr", "198.19.0.0/16"]
        func invalidDrop(_ ns: String, _ extra: [String] = []) throws -> Bool {
            let r = try bed.svcnat(ns, ["apply", "--dry-run", "--format", "iptables", "-f", examples] + flags + extra)
            #expect(r.code == 0, "\(r.err)")
            return r.out.contains("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP")
        }
        #expect(try bed.sh(a, sysctl).hasPrefix("0"))
        #expect(try invalidDrop(a))
        #expect(try !invalidDrop(a, ["--conntrack-tcp-be-liberal"]))
        let applied = try bed.svcnat(a, ["apply", "-f", examples, "--conntrack-tcp-be-liberal"] + flags)
        #expect(applied.code == 0, "\(applied.err)")
        #expect(try bed.sh(a, sysctl).hasPrefix("1"))
        // Now that the namespace is liberal, the rendering leaves the drop out by itself.
        #expect(try !invalidDrop(a))
        #expect(try invalidDrop(b) && bed.sh(b, sysctl).hasPrefix("0"))
        let dir = try bed.makeDirectory()
        try FileManager.default.copyItem(atPath: examples + "/codereview.yaml", toPath: dir + "/codereview.yaml")
        let daemon = try bed.startDaemon(c, ["--manifests", dir, "--conntrack-tcp-be-liberal", "--metrics-bind-address", ""] + flags)
        #expect(within(5) { daemon.log().contains("sync (full") } != nil, "\(daemon.log())")
        #expect(daemon.log().contains("nf_conntrack_tcp_be_liberal set to 1"), "\(daemon.log())")
        #expect(try bed.sh(c, sysctl).hasPrefix("1"))
        // The machine's own namespace is untouched.
        #expect(try run(sysctl).out == rootBefore)
    }
}
