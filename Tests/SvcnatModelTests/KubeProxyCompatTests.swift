import Foundation
import SvcnatSources
import Testing

/// kube-proxy's command line and its KubeProxyConfiguration, as svcnat takes them.
@Suite struct KubeProxyCommandLine {
    func normalize(_ args: [String], files: [String: String] = [:]) throws -> KubeProxyCompat.Rewritten {
        try KubeProxyCompat.normalize(args) { path in
            guard let t = files[path] else { throw CocoaError(.fileNoSuchFile) }
            return t
        }
    }

    @Test func kubeProxysSpellingsBecomeSvcnats() throws {
        #expect(
            try normalize(["run", "--hostname-override=node-a", "--proxy-mode", "nftables", "--cluster-cidr=198.19.0.0/16,2001:db8:1::/48"])
                .args == ["run", "--node-name", "node-a", "--cluster-cidr", "198.19.0.0/16", "--cluster-cidr", "2001:db8:1::/48"])
        #expect(
            try normalize(["run", "--nodeport-addresses", "198.18.0.0/24, 2001:db8::/64"]).args == [
                "run", "--nodeport-addresses", "198.18.0.0/24", "--nodeport-addresses", "2001:db8::/64"
            ])
        // Bind addresses: an IP alone gets kube-proxy's port, "" turns the server off.
        #expect(
            try normalize(["run", "--metrics-bind-address", "0.0.0.0", "--healthz-bind-address=::"]).args == [
                "run", "--metrics-bind-address", "0.0.0.0:10249", "--healthz-bind-address", "[::]:10256"
            ])
        #expect(try normalize(["run", "--metrics-bind-address="]).args == ["run", "--metrics-bind-address", ""])
        #expect(
            try normalize(["run", "--healthz-bind-address", "127.0.0.1:9999"]).args == ["run", "--healthz-bind-address", "127.0.0.1:9999"])
        // klog's levels: 4 and up is debug.
        #expect(try normalize(["run", "-v=2"]).args == ["run"])
        #expect(try normalize(["run", "--v=4"]).args == ["run", "--verbose"])
        #expect(try normalize(["run", "--v", "6"]).args == ["run", "--verbose"])
        #expect(try normalize(["apply", "-v", "-f", "x.yaml"]).args == ["apply", "-v", "-f", "x.yaml"])
        // svcnat's own spellings are left as they are, values included.
        #expect(try normalize(["apply", "-f", "--weird,name.yaml"]).args == ["apply", "-f", "--weird,name.yaml"])
    }

    @Test func otherProxyModesAreRefusedWithTheReason() {
        for mode in ["iptables", "ipvs", "kernelspace"] {
            #expect(throws: KubeProxyCompat.Refusal.self) { try normalize(["run", "--proxy-mode", mode]) }
        }
        do {
            _ = try normalize(["run", "--proxy-mode=ipvs"])
        } catch {
            #expect(
                "\(error)"
                    == "--proxy-mode ipvs: svcnat programs nftables only (in its own table); give --proxy-mode nftables or leave it out")
        }
    }

    @Test func kubeadmsConfigMapGivesItsFlagsAndWarnsOnlyAboutWhatItSets() throws {
        let text = try String(contentsOfFile: fixtures + "/kubeadm-kube-proxy.conf", encoding: .utf8)
        let r = try normalize(
            ["run", "--config=/var/lib/kube-proxy/config.conf", "--hostname-override=node-a"],
            files: ["/var/lib/kube-proxy/config.conf": text])
        #expect(
            r.args == [
                "run", "--kubeconfig", "/var/lib/kube-proxy/kubeconfig.conf", "--cluster-cidr", "198.19.0.0/16", "--node-name", "node-a"
            ])
        #expect(r.warnings == [])
        // Fields set: taken, or one warning each; the command line overrides the file.
        let set =
            text.replacingOccurrences(
                of: "  masqueradeAll: false\n  masqueradeBit: null\n  minSyncPeriod: 0s\n  syncPeriod: 0s\nnodePort",
                with: "  masqueradeAll: true\n  masqueradeBit: 14\n  minSyncPeriod: 2s\n  syncPeriod: 0s\nnodePort"
            )
            .replacingOccurrences(of: "nodePortAddresses: null", with: "nodePortAddresses: [198.18.0.0/24]")
            .replacingOccurrences(of: "mode: \"\"", with: "mode: ipvs")
            .replacingOccurrences(of: "  tcpBeLiberal: false", with: "  tcpBeLiberal: true")
            .replacingOccurrences(of: "metricsBindAddress: \"\"", with: "metricsBindAddress: 0.0.0.0")
        let s = try normalize(["run", "--config", "k.conf", "--cluster-cidr", "198.19.0.0/17"], files: ["k.conf": set])
        #expect(
            s.args == [
                "run", "--masquerade-all", "--min-sync-period", "2s", "--kubeconfig", "/var/lib/kube-proxy/kubeconfig.conf",
                "--conntrack-tcp-be-liberal",
                "--metrics-bind-address", "0.0.0.0:10249", "--nodeport-addresses", "198.18.0.0/24", "--cluster-cidr", "198.19.0.0/17"
            ])
        #expect(
            s.warnings == [
                "--config k.conf: mode ipvs: svcnat programs nftables only (in its own table); give --proxy-mode nftables or leave it out; the mode is ignored"
            ])
        #expect(throws: KubeProxyCompat.Refusal.self) {
            try normalize(["run", "--config", "k.conf"], files: ["k.conf": "kind: ConfigMap\n"])
        }
        // A KubeProxyConfiguration is for the node agent.
        #expect(throws: KubeProxyCompat.Refusal.self) { try normalize(["apply", "--config", "k.conf"], files: ["k.conf": text]) }
    }
}
