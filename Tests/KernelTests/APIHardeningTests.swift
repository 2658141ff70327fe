import Foundation
import Testing

extension RootTests.APISourceTests {
    /// The daemon on the test API server with web (198.18.100.20) on pod 1, once it serves it.
    func webOnAPI(_ a: API) throws -> Testbed.Background {
        try a.ctl("put", service("web", ip: "198.18.100.20"))
        try a.ctl("put", slice("web-a", of: "web", pods: [1]))
        let daemon = try a.bed.startDaemon(
            a.node,
            ["--kubeconfig", try a.kubeconfig(), "--min-sync-period", "0", "--node-name", "node-a", "--cluster-cidr", "198.19.0.0/16"])
        #expect(try follows(a, ["pod1"], within: 10), "\(daemon.log())")
        return daemon
    }

    /// A watch that always answered 410 got 339 relists in 10 s. Relists that no watch event
    /// separates now back off as failures do (0.5 s doubling, jittered).
    @Test func aWatchThatAlwaysAnswersGoneIsRelistedWithBackoff() throws {
        let a = try api("apigone")
        defer { a.bed.close() }
        let daemon = try webOnAPI(a)
        let before = try a.count("lists", "/api/v1/services")
        try a.ctl("fault", #"{"mode": "gone"}"#)
        try a.ctl("drop")
        sleep(10)
        let relists = try a.count("lists", "/api/v1/services") - before
        print("410 storm: \(relists) relists of services in 10 s")
        #expect(relists >= 2 && relists <= 8, "\(relists) relists in 10 s: \(daemon.log().suffix(1500))")
        // The rules stay in force meanwhile.
        #expect(try answers(a) == ["pod1"])
    }

    /// A `continue` token that never ends grew memory without bound. A list now stops at
    /// 1,000 pages (or 500,000 objects) with an error, and the rules in force stay.
    @Test func aListThatNeverEndsIsCutOff() throws {
        let a = try api("apiendless", extra: ["--max-page", "1"])
        defer { a.bed.close() }
        let daemon = try webOnAPI(a)
        try a.ctl("fault", #"{"mode": "endless"}"#)
        // A change the watches miss, then the history compacted: they get 410 and list again.
        try a.ctl("pause")
        try a.ctl("drop")
        try a.ctl("put", slice("web-b", of: "web", pods: [2]))
        try a.ctl("compact")
        try a.ctl("resume")
        #expect(within(90) { daemon.log().contains("the list did not end after 1000 pages") } != nil, "\(daemon.log().suffix(1500))")
        #expect(try answers(a) == ["pod1"])
    }

    /// A watch line without a newline was rescanned on every chunk, at 100% CPU, without end.
    /// A line is now scanned once and dropped past 16 MB.
    @Test func aWatchLineThatNeverEndsIsDropped() throws {
        let a = try api("apiline")
        defer { a.bed.close() }
        let daemon = try webOnAPI(a)
        try a.ctl("fault", #"{"mode": "longline"}"#)
        try a.ctl("drop")
        #expect(within(30) { daemon.log().contains("a watch event is longer than 16 MB") } != nil, "\(daemon.log().suffix(1500))")
        #expect(try answers(a) == ["pod1"])
    }

    /// The watch trusted an object's own kind: a Pod on the Services watch became an endpoint.
    /// An object of another kind is now skipped, named in the log.
    @Test func aPodOnTheServicesWatchIsNotTakenForAnything() throws {
        let a = try api("apikind")
        defer { a.bed.close() }
        // web selects app=web and has no EndpointSlice: a Pod would give it an endpoint.
        try a.ctl("put", service("web", ip: "198.18.100.20"))
        let daemon = try a.bed.startDaemon(
            a.node,
            ["--kubeconfig", try a.kubeconfig(), "--min-sync-period", "0", "--node-name", "node-a", "--cluster-cidr", "198.19.0.0/16"])
        #expect(within(10) { d.ruleset(a.bed, a.node).contains("198.18.100.20") } != nil, "\(daemon.log())")
        let pod = """
            {"path": "/api/v1/services", "type": "ADDED", "object": {"kind": "Pod", "apiVersion": "v1",
             "metadata": {"name": "intruder", "namespace": "demo", "labels": {"app": "web"}, "resourceVersion": "99999"},
             "status": {"podIP": "198.19.2.2", "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}}
            """
        try a.ctl("inject", pod)
        #expect(within(5) { daemon.log().contains("a Pod in the Service collection; skipped") } != nil, "\(daemon.log())")
        usleep(500_000)
        #expect(!d.ruleset(a.bed, a.node).contains("198.19.2.2"))
    }

    /// Server error text with CR, LF and ESC was logged raw, so a server could forge log lines.
    @Test func serverTextIsEscapedBeforeItIsLogged() throws {
        let a = try api("apictrl")
        defer { a.bed.close() }
        try a.ctl("fault", #"{"mode": "ctrl"}"#)
        let daemon = try a.bed.startDaemon(a.node, ["--kubeconfig", try a.kubeconfig(), "--node-name", "node-a"])
        #expect(within(10) { daemon.log().contains("boom") } != nil, "\(daemon.log())")
        let log = daemon.log()
        #expect(!log.contains("\u{1b}") && !log.split(separator: "\n").contains { $0.hasPrefix("FAKE") }, "\(log)")
        #expect(log.contains("boom\\u{d}\\u{a}FAKE"), "\(log)")
    }
}

extension RootTests.APISourceTests {
    /// With the API unreachable from the start, nothing was ever programmed from it: the log
    /// says so, not that "the last good rules stay in force".
    @Test func anUnreachableAPIAtStartIsNotSaidToHaveGoodRules() throws {
        let a = try api("apinever")
        defer { a.bed.close() }
        a.server.signal(SIGKILL)
        _ = a.server.waitExit(seconds: 5)
        let daemon = try a.bed.startDaemon(a.node, ["--kubeconfig", try a.kubeconfig(), "--min-sync-period", "0", "--node-name", "node-a"])
        #expect(
            within(10) { daemon.log().contains("nothing is programmed from the API until its first lists complete") } != nil,
            "\(daemon.log())")
        #expect(!daemon.log().contains("the last good rules stay in force"), "\(daemon.log())")
    }
}

extension RootTests.APISourceTests {
    /// The DaemonSet's way (deploy/daemonset.yaml, kubeadm's pattern): kube-proxy's ConfigMap
    /// mounted, `run --config=.../config.conf --hostname-override=...`, whose kubeconfig names
    /// the control-plane endpoint with the service account's token file. The server is reachable
    /// only there, while KUBERNETES_SERVICE_HOST names a ClusterIP nobody programs: it syncs.
    @Test func theDaemonSetsConfigMapReachesTheControlPlaneWithoutAProxy() throws {
        let a = try api("apiconfigmap")
        defer { a.bed.close() }
        try a.ctl("put", service("web", ip: "198.18.100.20"))
        try a.ctl("put", slice("web-a", of: "web", pods: [1]))
        let mount = a.certs + "/kube-proxy"
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        try "t0ken".write(toFile: a.certs + "/token", atomically: true, encoding: .utf8)
        // kubeconfig.conf as kubeadm's template writes it, pointed at this test bed's files.
        try """
        apiVersion: v1
        kind: Config
        clusters:
        - cluster:
            certificate-authority: \(a.certs)/ca.crt
            server: https://127.0.0.1:6443
          name: default
        contexts:
        - context:
            cluster: default
            namespace: default
            user: default
          name: default
        current-context: default
        users:
        - name: default
          user:
            tokenFile: \(a.certs)/token
        """.write(toFile: mount + "/kubeconfig.conf", atomically: true, encoding: .utf8)
        let kubeadm = try String(
            contentsOfFile: URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("SvcnatModelTests/Fixtures/kubeadm-kube-proxy.conf").path, encoding: .utf8)
        try kubeadm.replacingOccurrences(of: "/var/lib/kube-proxy/kubeconfig.conf", with: mount + "/kubeconfig.conf")
            .write(toFile: mount + "/config.conf", atomically: true, encoding: .utf8)
        // The DaemonSet's own command line, its mount path and NODE_NAME filled in.
        let ds = try String(
            contentsOfFile: URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent("deploy/daemonset.yaml").path, encoding: .utf8)
        let lines = ds.split(separator: "\n").map(String.init)
        let start = try #require(lines.firstIndex { $0.hasSuffix("command:") })
        let command = lines[(start + 1)...].prefix { $0.trimmingCharacters(in: .whitespaces).hasPrefix("- ") }.map {
            $0.trimmingCharacters(in: .whitespaces).dropFirst(2).replacingOccurrences(of: "/var/lib/kube-proxy", with: mount)
                .replacingOccurrences(of: "$(NODE_NAME)", with: "node-a")
        }
        #expect(command.first == "/usr/local/bin/svcnat" && command.contains("run"), "\(command)")
        let daemon = try a.bed.startProcessWithEnv(
            a.node, [svcnatPath] + command.dropFirst() + ["--min-sync-period", "0"],
            env: ["KUBERNETES_SERVICE_HOST": "198.18.100.1", "KUBERNETES_SERVICE_PORT": "443"])
        #expect(try follows(a, ["pod1"], within: 10), "\(daemon.log())")
        #expect(daemon.log().contains("the API server https://127.0.0.1:6443"), "\(daemon.log())")
    }

    /// In a pod whose only API address is the `kubernetes` Service's ClusterIP (in-cluster
    /// config: KUBERNETES_SERVICE_HOST and the service account's files), with no proxy
    /// programming that ClusterIP: the log says why the API cannot be reached and what to give.
    /// The service account's folder is made in a private mount namespace (a tmpfs over /run),
    /// so nothing of it reaches the machine's own files.
    @Test func inAPodBehindAnUnprogrammedClusterIPTheLogSaysWhy() throws {
        let a = try api("apiincluster")
        defer { a.bed.close() }
        let account = "/run/secrets/kubernetes.io/serviceaccount"
        let script = """
            mount -t tmpfs tmpfs /run && mkdir -p \(account) && cp \(a.certs)/ca.crt \(account)/ca.crt \\
            && printf t0ken > \(account)/token && printf kube-system > \(account)/namespace \\
            && exec \(svcnatPath) run --min-sync-period 0 --node-name node-a
            """
        let daemon = try a.bed.startProcessWithEnv(
            a.node, ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            env: ["KUBERNETES_SERVICE_HOST": "198.18.100.1", "KUBERNETES_SERVICE_PORT": "443"])
        defer { daemon.signal(SIGTERM) }
        let said = within(25) { daemon.log().contains("KUBERNETES_SERVICE_HOST, the kubernetes Service's ClusterIP") }
        #expect(said != nil, "\(daemon.log())")
        let log = daemon.log()
        #expect(log.contains("in-cluster service account") && log.contains("https://198.18.100.1:443"), "\(log)")
        #expect(log.contains("--kubeconfig, or --master"), "\(log)")
        // Nothing was programmed from a source it never listed.
        #expect(!d.ruleset(a.bed, a.node).contains("svcnat"))
    }

    /// kube-proxy's nodeEligible: while this node's Node is being deleted (a deletionTimestamp),
    /// /healthz answers 503 with nodeEligible false, so load balancers drain it; the rules keep
    /// serving. When the Node is back to normal, 200 again.
    @Test func aNodeBeingDeletedIsNotEligible() throws {
        let a = try api("apieligible")
        defer { a.bed.close() }
        func node(deleting: Bool) -> String {
            #"{"kind": "Node", "apiVersion": "v1", "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "z1"}"#
                + (deleting ? #", "deletionTimestamp": "2026-12-03T06:00:00Z", "finalizers": ["example.test/hold"]"# : "")
                + #"}, "spec": {}, "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.1"}]}}"#
        }
        try a.ctl("put", service("web", ip: "198.18.100.20"))
        try a.ctl("put", slice("web-a", of: "web", pods: [1]))
        try a.ctl("put", node(deleting: false))
        let daemon = try a.bed.startDaemon(
            a.node, ["--kubeconfig", try a.kubeconfig(), "--min-sync-period", "0", "--node-name", "node-a"])
        #expect(try follows(a, ["pod1"], within: 10), "\(daemon.log())")
        func health() throws -> (Int, [String: Any]) {
            let (status, body) = try d.http(a.bed, a.node, "http://127.0.0.1:10256/healthz")
            return (status, (try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]) ?? [:])
        }
        #expect(try within(5) { try health().0 == 200 } != nil, "\(daemon.log())")
        #expect(try health().1["nodeEligible"] as? Bool == true)
        try a.ctl("put", node(deleting: true))
        #expect(try within(5) { try health().0 == 503 } != nil, "\(daemon.log())")
        let (_, body) = try health()
        #expect(body["nodeEligible"] as? Bool == false && (body["reason"] as? String ?? "").contains("being deleted"), "\(body)")
        #expect(try answers(a) == ["pod1"])
        try a.ctl("put", node(deleting: false))
        #expect(try within(5) { try health().0 == 200 } != nil, "\(daemon.log())")
        #expect(daemon.log().contains("node node-a is being deleted"), "\(daemon.log())")
    }
}
