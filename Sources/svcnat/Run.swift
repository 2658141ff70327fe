import ArgumentParser
import Foundation
import Logging
import SvcnatCore
import SvcnatDaemon
import SvcnatHost
import SvcnatKube

extension SvcnatLogHandler.Format: ExpressibleByArgument {}

extension Svcnat {
    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run as the node agent: program a folder of manifests, or the cluster's Services, and keep the kernel in step.",
            discussion: """
                The source is --manifests DIR, --kubeconfig FILE, or (with neither, inside a pod) the \
                in-cluster service account. A folder is watched with inotify; the API is listed and \
                watched (Services, EndpointSlices, this node's Node), and the first sync waits until \
                the initial lists are complete. Changes are applied within --min-sync-period. A file \
                that fails to parse or validate is reported and its last good version stays in force. Changes \
                others make to svcnat's table are noticed at once (nftables change events) and repaired. SIGHUP \
                forces a full resync; SIGTERM/SIGINT stop and leave the rules serving (or remove them \
                with --cleanup-on-exit).
                """)

        @Option(help: "A folder of manifests (read recursively: *.yaml, *.yml, *.json).")
        var manifests: String?

        @Option(help: "A kubeconfig file: the Kubernetes API is the source (TLS verified; token, token file or client certificate).")
        var kubeconfig: String?

        @Option(help: "The kubeconfig context to use (default: its current-context).")
        var context: String?

        @Option(help: "The API server's address, as kube-proxy's flag: overrides the kubeconfig's server (or, alone, is the source).")
        var master: String?

        @Flag(help: "kube-proxy's --cleanup: remove svcnat's tables and exit (svcnat cleanup).")
        var cleanup = false

        @Option(help: "The shortest time between syncs, e.g. 1s, 500ms, 0 (at once).")
        var minSyncPeriod = "1s"

        @Option(help: "How often a full resync compares everything with the kernel, e.g. 1h, 30s.")
        var syncPeriod = "1h"

        @Option(help: "Where /metrics is served (HOST:PORT, an IP alone for port 10249, or \"\" for nowhere).")
        var metricsBindAddress = "127.0.0.1:10249"

        @Option(help: "Where /healthz and /livez are served (HOST:PORT, an IP alone for port 10256, or \"\" for nowhere).")
        var healthzBindAddress = "0.0.0.0:10256"

        @Option(help: "Log lines as text (UTC timestamps with milliseconds) or json (one object per line), as kube-proxy's flag.")
        var loggingFormat: SvcnatLogHandler.Format = .text

        @Flag(help: "Remove svcnat's table when stopping.")
        var cleanupOnExit = false

        @Flag(
            help: ArgumentHelp(
                "Let a --manifests folder that holds no manifest file remove every Service; without it the rules in force "
                    + "stay, and the log and /healthz say so."))
        var allowEmpty = false

        @OptionGroup var options: CommonOptions

        func validate() throws {
            if manifests != nil && (kubeconfig != nil || master != nil) {
                throw ValidationError("give --manifests or --kubeconfig/--master, not both")
            }
            if let m = master, URL(string: m)?.scheme.map({ ["http", "https"].contains($0) }) != true {
                throw ValidationError("--master \"\(m)\" is not a URL such as https://198.18.0.1:6443")
            }
            if context != nil && kubeconfig == nil { throw ValidationError("--context needs --kubeconfig") }
            guard (try? parseDuration(minSyncPeriod)) != nil else {
                throw ValidationError("--min-sync-period \"\(minSyncPeriod)\" is not a duration such as 1s or 500ms, at most 168h")
            }
            guard let p = try? parseDuration(syncPeriod), p > .zero else {
                throw ValidationError("--sync-period \"\(syncPeriod)\" is not a positive duration such as 1h, at most 168h")
            }
        }

        func run() throws {
            useOneMallocArena()
            let format = loggingFormat
            LoggingSystem.bootstrap { SvcnatLogHandler(label: $0, format: format) }
            var logger = Logger(label: "svcnat")
            logger.logLevel = options.verbose ? .debug : .info
            if cleanup {
                let removed = try Reconciler(config: ProxyConfig(table: options.table), kernel: try NetlinkKernel()).cleanup()
                print(
                    removed.isEmpty
                        ? "svcnat: no table ip or ip6 \(options.table); nothing to remove"
                        : "svcnat: removed " + removed.map { "table \($0.rawValue) \(options.table)" }.joined(separator: " and "))
                return
            }
            var api: APIConfig?
            do {
                if let kubeconfig {
                    api = try KubeConfig.load(path: kubeconfig, context: context)
                    if let master { api?.server = master }
                } else if let master {
                    // kube-proxy's --master alone: that server, no credentials.
                    api = APIConfig(server: master, origin: "--master")
                } else if manifests == nil {
                    api = try KubeConfig.inCluster()
                    if api == nil {
                        FileHandle.standardError.write(
                            "svcnat run: no source. Give one of:\n"
                                + "  --manifests DIR      a folder of manifests, watched\n"
                                + "  --kubeconfig FILE    the Kubernetes API, with that kubeconfig (--context NAME to pick one)\n"
                                + "  (in a pod)           the in-cluster service account, when neither is given\n"
                                + "See svcnat run --help.\n")
                        throw ExitCode(2)
                    }
                }
            } catch let e as KubeConfigError {
                FileHandle.standardError.write("svcnat: \(e)\n")
                throw ExitCode(2)
            }
            var config = DaemonConfig(
                proxy: options.config, manifests: manifests ?? "",
                minSyncPeriod: try parseDuration(minSyncPeriod), syncPeriod: try parseDuration(syncPeriod),
                metricsAddress: metricsBindAddress, healthzAddress: healthzBindAddress,
                cleanupOnExit: cleanupOnExit)
            config.api = api
            config.allowEmpty = allowEmpty
            if options.allocate && api != nil {
                throw ValidationError("--allocate is for --manifests: the API server allocates addresses and node ports itself")
            }
            config.allocation = options.allocation
            if options.conntrackTcpBeLiberal { setTCPBeLiberal(logger) }
            let code = try Daemon(config: config, logger: logger).run()
            if code != 0 { throw ExitCode(code) }
        }
    }
}

/// The longest duration a flag takes: a week, far beyond any sync period kube-proxy users set,
/// and far from where a timer's arithmetic overflows (`--sync-period 3000000h` crashed).
let maxFlagDuration: Duration = .seconds(7 * 24 * 3600)

/// Go-style durations as kube-proxy's flags take them: "1h", "30s", "500ms", "1m30s", "0";
/// at most `maxFlagDuration`.
func parseDuration(_ s: String) throws -> Duration {
    let d = try parseAnyDuration(s)
    guard d <= maxFlagDuration else { throw ValidationError("duration \(s) is longer than a week (168h), the longest svcnat takes") }
    return d
}

private func parseAnyDuration(_ s: String) throws -> Duration {
    if s == "0" { return .zero }
    var total = Duration.zero
    var number = ""
    var unit = ""
    func flush() throws {
        guard let n = Double(number), n.isFinite, n < 1e12, !unit.isEmpty else { throw ValidationError("bad duration \(s)") }
        let scale: Double
        switch unit {
        case "ms": scale = 0.001
        case "s": scale = 1
        case "m": scale = 60
        case "h": scale = 3600
        default: throw ValidationError("bad duration unit \(unit)")
        }
        total += .milliseconds(Int64((n * scale * 1000).rounded()))
        number = ""
        unit = ""
    }
    for c in s {
        if c.isNumber || c == "." {
            if !unit.isEmpty { try flush() }
            number.append(c)
        } else {
            unit.append(c)
        }
    }
    try flush()
    return total
}

/// kube-proxy's `--conntrack-tcp-be-liberal`: set at start; a node where it cannot be set
/// (a read-only /proc/sys) keeps running, and the log says so.
func setTCPBeLiberal(_ logger: Logger) {
    do {
        try TCPBeLiberal.set()
        logger.info("--conntrack-tcp-be-liberal: \(TCPBeLiberal.path) set to 1")
    } catch {
        logger.error("--conntrack-tcp-be-liberal: \(error); conntrack stays strict about TCP windows")
    }
}
