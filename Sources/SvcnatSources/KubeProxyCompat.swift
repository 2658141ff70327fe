import Foundation
import NFTModel
import Yams

/// kube-proxy's command line and configuration file, turned into svcnat's flags, so an
/// operator can run svcnat with the arguments and the ConfigMap that ran kube-proxy. Pure: the
/// caller gives the file reader, and gets the arguments svcnat parses and what to warn about.
public enum KubeProxyCompat {
    public struct Rewritten: Equatable, Sendable {
        public var args: [String]
        public var warnings: [String]
    }

    public struct Refusal: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    /// kube-proxy's default ports, for a bind address given as an IP alone.
    static let defaultPorts = ["--metrics-bind-address": 10249, "--healthz-bind-address": 10256]
    /// Flags that take comma lists in kube-proxy and are repeated in svcnat.
    static let lists: Set<String> = ["--cluster-cidr", "--nodeport-addresses", "--service-cidr"]
    /// Flags of svcnat that take a value (so `--flag value` is one pair).
    static let valued: Set<String> = [
        "--cluster-cidr", "--nodeport-addresses", "--service-cidr", "--node-name", "--node-zone", "--table", "--manifests",
        "--kubeconfig", "--context", "--master", "--min-sync-period", "--sync-period", "--metrics-bind-address",
        "--healthz-bind-address", "--endpoint-selection", "--service-node-port-range", "--config", "--proxy-mode",
        "--hostname-override", "--v", "--logging-format", "-f", "--filename", "--format", "--source", "--ingress"
    ]

    /// The arguments with kube-proxy's spellings turned into svcnat's:
    /// `--hostname-override` is `--node-name`; `--proxy-mode nftables` is taken (another mode is
    /// refused); comma lists become repeated flags; a bind address that is an IP alone gets
    /// kube-proxy's port; `-v=N`, `--v=N` and `--v N` are `--verbose` from level 4 (klog's
    /// debug) on; `--config FILE` gives the flags its KubeProxyConfiguration stands for, which
    /// the flags given on the command line override.
    public static func normalize(_ args: [String], readFile: (String) throws -> String) throws -> Rewritten {
        var out: [String] = [], warnings: [String] = [], fromFile: [String] = []
        var i = 0
        func value(_ name: String, inline: String?) throws -> String {
            if let inline { return inline }
            i += 1
            guard i < args.count else { throw Refusal(description: "\(name) needs a value") }
            return args[i]
        }
        while i < args.count {
            let arg = args[i]
            if arg == "--" {
                out += args[i...]
                break
            }
            var name = arg, inline: String?
            if arg.hasPrefix("-"), let eq = arg.firstIndex(of: "=") {
                name = String(arg[..<eq])
                inline = String(arg[arg.index(after: eq)...])
            }
            switch name {
            case "-v" where inline != nil, "--v":
                let level = try value(name, inline: inline)
                guard let n = Int(level), n >= 0 else { throw Refusal(description: "\(name)=\(level): a log level is a number (0-10)") }
                if n >= 4 { out.append("--verbose") }
            case "--hostname-override":
                out += ["--node-name", try value(name, inline: inline)]
            case "--proxy-mode":
                let mode = try value(name, inline: inline)
                if let why = modeProblem(mode) { throw Refusal(description: "--proxy-mode \(mode): \(why)") }
            case "--config":
                let file = try value(name, inline: inline)
                guard args.first == "run" else {
                    throw Refusal(description: "--config \(file): a KubeProxyConfiguration is for svcnat run (the node agent)")
                }
                let text: String
                do { text = try readFile(file) } catch { throw Refusal(description: "--config \(file): cannot be read: \(error)") }
                let r = try flags(fromConfig: text, file: file)
                fromFile = r.args
                warnings += r.warnings
            case _ where lists.contains(name):
                for part in try value(name, inline: inline).split(separator: ",") {
                    let p = part.trimmingCharacters(in: " ")
                    if !p.isEmpty { out += [name, p] }
                }
            case _ where defaultPorts[name] != nil:
                out += [name, bindAddress(try value(name, inline: inline), port: defaultPorts[name]!)]
            case _ where inline != nil && valued.contains(name):
                out += [name, inline!]
            case _ where valued.contains(name):
                out.append(arg)
                if i + 1 < args.count {
                    i += 1
                    out.append(args[i])
                }
            default:
                out.append(arg)
            }
            i += 1
        }
        // The file's flags go after the subcommand; a flag the command line gives wins.
        let given = Set(out.filter { $0.hasPrefix("--") })
        var kept: [String] = []
        var j = 0
        while j < fromFile.count {
            let flag = fromFile[j]
            let takesValue = valued.contains(flag)
            if !given.contains(flag) { kept += takesValue ? [flag, fromFile[j + 1]] : [flag] }
            j += takesValue ? 2 : 1
        }
        if !kept.isEmpty {
            let at = out.first.map { $0.hasPrefix("-") ? 0 : 1 } ?? 0
            out.insert(contentsOf: kept, at: at)
        }
        return Rewritten(args: out, warnings: warnings)
    }

    static func modeProblem(_ mode: String) -> String? {
        mode.isEmpty || mode == "nftables"
            ? nil : "svcnat programs nftables only (in its own table); give --proxy-mode nftables or leave it out"
    }

    /// "" (off), HOST:PORT as it is, or an IP alone with kube-proxy's port for that flag.
    static func bindAddress(_ s: String, port: Int) -> String {
        if s.isEmpty { return "" }
        if let ip = IPAddress(s) { return ip.family == .v6 ? "[\(s)]:\(port)" : "\(s):\(port)" }
        if s.hasPrefix("["), s.hasSuffix("]") { return "\(s):\(port)" }
        return s
    }

    /// The flags a KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1, as kubeadm writes
    /// it into the kube-proxy ConfigMap) stands for, and one warning per field set to something
    /// svcnat does not do. Fields left at their zero value (kubeadm writes every field) are not
    /// warned about.
    public static func flags(fromConfig text: String, file: String) throws -> Rewritten {
        let doc: Any?
        do { doc = try Yams.load(yaml: text) } catch {
            throw Refusal(description: "--config \(file): not valid YAML: \(ManifestDecoder.yamlMessage(error))")
        }
        guard let root = doc as? [String: Any] else { throw Refusal(description: "--config \(file): not a KubeProxyConfiguration") }
        guard root["kind"] as? String == "KubeProxyConfiguration", root["apiVersion"] as? String == "kubeproxy.config.k8s.io/v1alpha1"
        else {
            throw Refusal(
                description: "--config \(file): kind KubeProxyConfiguration of apiVersion kubeproxy.config.k8s.io/v1alpha1 expected")
        }
        var args: [String] = [], warnings: [String] = []
        func str(_ v: Any?) -> String? { v.map { "\($0)" } }
        func unsupported(_ path: String, _ v: Any) {
            warnings.append("--config \(file): \(path) (\(v)) is not supported by svcnat; ignored")
        }
        func walk(_ path: String, _ v: Any) {
            guard !isZero(v) else { return }
            switch path {
            case "apiVersion", "kind": return
            case "bindAddress":
                if let s = str(v), !["0.0.0.0", "::"].contains(s) {
                    warnings.append("--config \(file): bindAddress \(s) has no effect: node ports are served on --nodeport-addresses")
                }
            case "clusterCIDR":
                for p in (str(v) ?? "").split(separator: ",") { args += ["--cluster-cidr", p.trimmingCharacters(in: " ")] }
            case "hostnameOverride": args += ["--node-name", str(v)!]
            case "healthzBindAddress": args += ["--healthz-bind-address", bindAddress(str(v)!, port: 10256)]
            case "metricsBindAddress": args += ["--metrics-bind-address", bindAddress(str(v)!, port: 10249)]
            case "nodePortAddresses":
                for a in v as? [Any] ?? [v] {
                    let s = str(a) ?? ""
                    if s == "primary" { unsupported("nodePortAddresses", s); continue }
                    args += ["--nodeport-addresses", s]
                }
            case "mode":
                if let why = modeProblem(str(v)!) { warnings.append("--config \(file): mode \(v): \(why); the mode is ignored") }
            case "clientConnection.kubeconfig": args += ["--kubeconfig", str(v)!]
            case "nftables.masqueradeAll", "iptables.masqueradeAll":
                if v as? Bool == true, !args.contains("--masquerade-all") { args.append("--masquerade-all") }
            case "nftables.minSyncPeriod", "iptables.minSyncPeriod":
                if !args.contains("--min-sync-period") { args += ["--min-sync-period", str(v)!] }
            case "nftables.syncPeriod", "iptables.syncPeriod":
                if !args.contains("--sync-period") { args += ["--sync-period", str(v)!] }
            case "conntrack.tcpBeLiberal":
                if v as? Bool == true { args.append("--conntrack-tcp-be-liberal") }
            case "nftables.masqueradeBit", "iptables.masqueradeBit":
                if str(v) != "14" { unsupported(path, v) }
            default:
                if let m = v as? [String: Any] {
                    for k in m.keys.sorted() { walk(path + "." + k, m[k]!) }
                } else {
                    unsupported(path, v)
                }
            }
        }
        // nftables before iptables: kube-proxy takes the iptables twins only where nftables is unset.
        for k in root.keys.sorted(by: { ($0 == "nftables" ? 0 : 1, $0) < ($1 == "nftables" ? 0 : 1, $1) }) { walk(k, root[k]!) }
        return Rewritten(args: args, warnings: warnings)
    }

    /// kubeadm writes every field, most at their zero value: those say nothing.
    static func isZero(_ v: Any) -> Bool {
        switch v {
        case is NSNull: return true
        case let b as Bool: return !b
        case let n as Int: return n == 0
        case let d as Double: return d == 0
        case let s as String: return s.isEmpty || s == "0s" || s == "0"
        case let a as [Any]: return a.isEmpty
        case let m as [String: Any]: return m.values.allSatisfy(isZero)
        default: return false
        }
    }
}
