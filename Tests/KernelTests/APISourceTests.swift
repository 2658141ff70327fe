import Foundation
import Testing

extension RootTests {
    /// `svcnat run --kubeconfig` against a test API server (Helpers/apiserver.py: HTTPS, lists,
    /// chunked watch streams, bookmarks, 410 Gone, dropped streams, token and client-certificate
    /// authentication) in the node's namespace; pods answer over real traffic.
    @Suite(.serialized)
    struct APISourceTests {
        let d = DaemonTests()

        /// A served topology, certificates, and a running API server in the node namespace.
        struct API {
            let bed: Testbed
            let node: String
            let certs: String
            var server: Testbed.Background
            var serverArgs: [String]

            func ctl(_ op: String, _ json: String = "{}") throws { try bed.sh(node, ["python3", helper("apictl.py"), "6444", op, json]) }
            func stats() throws -> [String: Any] {
                try JSONSerialization.jsonObject(with: Data(try bed.sh(node, ["python3", helper("apictl.py"), "6444", "stats"]).utf8))
                    as! [String: Any]
            }
            func count(_ what: String, _ path: String) throws -> Int { ((try stats()[what] as? [String: Int]) ?? [:])[path] ?? 0 }

            /// A kubeconfig for the server, with a token, a client certificate, or neither; and a CA.
            func kubeconfig(token: String? = "t0ken", clientCert: Bool = false, ca: String = "ca.crt") throws -> String {
                let user = clientCert ? "client-certificate: client.crt\n    client-key: client.key" : token.map { "token: \($0)" } ?? "{}"
                let text = """
                    apiVersion: v1
                    kind: Config
                    current-context: test
                    contexts:
                    - name: other
                      context: {cluster: nowhere, user: admin}
                    - name: test
                      context: {cluster: test, user: node}
                    clusters:
                    - name: nowhere
                      cluster: {server: "https://127.0.0.1:1"}
                    - name: test
                      cluster:
                        server: https://127.0.0.1:6443
                        certificate-authority: \(ca)
                    users:
                    - name: admin
                      user: {token: not-this-one}
                    - name: node
                      user:
                        \(user)
                    """
                let path = certs + "/kubeconfig-\(Int.random(in: 0..<1_000_000)).yaml"
                try text.write(toFile: path, atomically: true, encoding: .utf8)
                return path
            }

            func startServer(_ extra: [String] = []) throws -> Testbed.Background {
                let s = try bed.startProcess(node, ["python3", helper("apiserver.py")] + serverArgs + extra)
                guard within(10, { s.log().contains("ready") }) != nil else {
                    throw TestbedError("apiserver did not start: \(s.log())")
                }
                return s
            }
        }

        func api(_ label: String, pods: Int = 3, cert: String = "server.crt", extra: [String] = []) throws -> API {
            let bed = Testbed(label)
            try bed.servedTopology(pods: pods)
            let node = bed.ns("node")
            let certs = try bed.makeDirectory()
            let made = try run(["bash", helper("certs.sh"), certs])
            guard made.code == 0 else { throw TestbedError("certs.sh: \(made.err)") }
            let args = [
                "--port", "6443", "--control-port", "6444", "--cert", certs + "/" + cert, "--key", certs + "/server.key",
                "--client-ca", certs + "/ca.crt", "--token", "t0ken", "--state", certs + "/state.json", "--seconds", "120"
            ]
            var a = API(bed: bed, node: node, certs: certs, server: try bed.startProcess(node, ["true"]), serverArgs: args)
            a.server = try a.startServer(extra)
            return a
        }

        /// A Service as the API server returns it, fields svcnat ignores included.
        func service(_ name: String, ip: String, labels: [String: String] = [:]) -> String {
            let l = labels.map { "\"\($0)\": \"\($1)\"" }.joined(separator: ", ")
            return """
                {"kind": "Service", "apiVersion": "v1",
                 "metadata": {"name": "\(name)", "namespace": "demo", "uid": "6d1c0f7a-\(name)",
                  "creationTimestamp": "2026-11-27T09:00:00Z",
                              "labels": {\(l)}, "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                              "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                               "fieldsType": "FieldsV1", "fieldsV1": {}}]},
                 "spec": {"ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                          "selector": {"app": "\(name)"}, "clusterIP": "\(ip)", "clusterIPs": ["\(ip)"], "type": "ClusterIP",
                          "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                           "internalTrafficPolicy": "Cluster"},
                 "status": {"loadBalancer": {}}}
                """
        }

        /// An EndpointSlice of `service` with the given pods (198.19.N.2) as ready endpoints.
        func slice(_ name: String, of service: String, pods: [Int]) -> String {
            let eps = pods.map {
                """
                {"addresses": ["198.19.\($0).2"], "conditions": {"ready": true, "serving": true, "terminating": false},
                 "nodeName": "node-a", "targetRef": {"kind": "Pod", "namespace": "demo", "name": "\(service)-\($0)", "uid": "p\($0)"}}
                """
            }.joined(separator: ", ")
            return """
                {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                 "metadata": {"name": "\(name)", "namespace": "demo", "uid": "s-\(name)", "generation": 3,
                              "labels": {"kubernetes.io/service-name": "\(service)",
                               "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                              "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "\(service)",
                               "uid": "6d1c0f7a-\(service)"}]},
                 "addressType": "IPv4", "endpoints": [\(eps)],
                 "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}
                """
        }

        func answers(_ a: API, count: Int = 30) throws -> Set<String> {
            Set(try a.bed.client(in: a.node, "tcp", "198.18.100.20", 80, count: count).answers.keys)
        }

        func follows(_ a: API, _ want: Set<String>, within seconds: Double = 5) throws -> Bool {
            try within(seconds) { try answers(a, count: 12 * max(want.count, 1)) == want } != nil
        }

        @Test func followsAStreamOfChangesThroughDropsAndRelists() throws {
            // Pages of one item: every list is chunked (limit/continue).
            let a = try api("apiwatch", extra: ["--max-page", "1"])
            defer { a.bed.close() }
            try a.ctl("put", service("web", ip: "198.18.100.20"))
            // One Service's endpoints split across two slices.
            try a.ctl("put", slice("web-a", of: "web", pods: [1]))
            try a.ctl("put", slice("web-b", of: "web", pods: [2]))
            let daemon = try a.bed.startDaemon(
                a.node,
                [
                    "--kubeconfig", try a.kubeconfig(), "--min-sync-period", "0", "--node-name", "node-a",
                    "--cluster-cidr", "198.19.0.0/16", "--sync-period", "1h"
                ])
            #expect(try follows(a, ["pod1", "pod2"], within: 10), "\(daemon.log())")
            // 1 Service, 2 slices, no Node: four pages in all (an empty list is one page).
            #expect(try (a.stats()["pages"] as? Int) == 4)

            // The stream: a slice changes, another Service (of another proxy) is ignored, a slice goes.
            try a.ctl("put", slice("web-b", of: "web", pods: [3]))
            #expect(try follows(a, ["pod1", "pod3"]))
            try a.ctl("put", service("other", ip: "198.18.100.21", labels: ["service.kubernetes.io/service-proxy-name": "someone-else"]))
            try a.ctl("put", slice("web-a", of: "web", pods: [1, 2]))
            #expect(try follows(a, ["pod1", "pod2", "pod3"]))
            #expect(!d.ruleset(a.bed, a.node).contains("198.18.100.21"))

            // A stream cut mid-way: svcnat watches again from the last resourceVersion, no new list.
            let lists = try a.count("lists", "/apis/discovery.k8s.io/v1/endpointslices")
            try a.ctl("drop")
            try a.ctl("delete", #"{"kind": "EndpointSlice", "namespace": "demo", "name": "web-a"}"#)
            #expect(try follows(a, ["pod3"]))
            #expect(try a.count("lists", "/apis/discovery.k8s.io/v1/endpointslices") == lists)

            // The server unavailable for a while (watches get 503), a change meanwhile, and the
            // history compacted past it: the next watch gets 410 Gone, svcnat lists again, and the
            // change is applied.
            try a.ctl("pause")
            try a.ctl("drop")
            try a.ctl("put", slice("web-a", of: "web", pods: [2]))
            // ... and an object svcnat rejects (the test server validates nothing): its last good
            // version stays, as a bad file's does.
            try a.ctl("put", slice("web-b", of: "web", pods: [3]).replacingOccurrences(of: "198.19.3.2", with: "198.19.3.999"))
            try a.ctl("compact")
            usleep(500_000)
            try a.ctl("resume")
            #expect(try follows(a, ["pod2", "pod3"]))
            #expect(try (a.stats()["gone"] as? Int ?? 0) >= 1)
            #expect(try a.count("lists", "/apis/discovery.k8s.io/v1/endpointslices") > lists)
            #expect(daemon.log().contains("410 Gone"))
            // Every collection watched again (after its own backoff): healthy.
            #expect(try within(10) { try d.http(a.bed, a.node, "http://127.0.0.1:10256/healthz").0 == 200 } != nil, "\(daemon.log())")
            #expect(try d.http(a.bed, a.node, "http://127.0.0.1:10256/healthz").1.contains("\"source\": \"api https://127.0.0.1:6443\""))
            let (_, m) = try d.http(a.bed, a.node, "http://127.0.0.1:10249/metrics")
            // Every collection was listed twice (the compaction outdated all three watches).
            for line in [
                #"svcnat_source_lists_total{resource="endpointslices"} 2"#, #"svcnat_source_lists_total{resource="services"} 2"#,
                #"svcnat_source_up{resource="endpointslices"} 1.0"#, #"svcnat_source_up{resource="nodes"} 1.0"#
            ] {
                #expect(m.contains(line), "metrics lack \(line):\n\(m)")
            }
            #expect(
                m.contains(#"svcnat_source_events_total{resource="endpointslices"}"#)
                    && m.contains(#"svcnat_source_errors_total{resource="endpointslices"}"#))
            // The Service goes: its rules go.
            try a.ctl("delete", #"{"kind": "Service", "namespace": "demo", "name": "web"}"#)
            #expect(within(5) { !d.ruleset(a.bed, a.node).contains("198.18.100.20") } != nil)
        }

        @Test func serverRestartLosesNothingAndStaleSourceShowsInHealth() throws {
            var a = try api("apirestart")
            defer { a.bed.close() }
            try a.ctl("put", service("web", ip: "198.18.100.20"))
            try a.ctl("put", slice("web-a", of: "web", pods: [1, 2]))
            let daemon = try a.bed.startDaemon(
                a.node, ["--kubeconfig", try a.kubeconfig(), "--min-sync-period", "0", "--node-name", "node-a"])
            #expect(try follows(a, ["pod1", "pod2"], within: 10), "\(daemon.log())")

            // The server goes away: the rules keep serving, /healthz says the source is stale.
            a.server.signal(SIGKILL)
            _ = a.server.waitExit(seconds: 5)
            #expect(
                try within(10) { try d.http(a.bed, a.node, "http://127.0.0.1:10256/healthz").1.contains("source stale") } != nil,
                "\(daemon.log())")
            #expect(try d.http(a.bed, a.node, "http://127.0.0.1:10256/healthz").0 == 503)
            #expect(try answers(a) == ["pod1", "pod2"])

            // It comes back with its stored objects but no watch history: svcnat converges.
            a.server = try a.startServer()
            try a.ctl("put", slice("web-a", of: "web", pods: [3]))
            #expect(try follows(a, ["pod3"], within: 40), "\(daemon.log())")
            #expect(try within(10) { try d.http(a.bed, a.node, "http://127.0.0.1:10256/healthz").0 == 200 } != nil)
        }

        @Test func firstSyncWaitsForTheInitialLists() throws {
            let a = try api("apifirst", extra: ["--list-delay", "3"])
            defer { a.bed.close() }
            try a.ctl("put", service("web", ip: "198.18.100.20"))
            try a.ctl("put", slice("web-a", of: "web", pods: [1]))
            let daemon = try a.bed.startDaemon(
                a.node, ["--kubeconfig", try a.kubeconfig(), "--min-sync-period", "0", "--node-name", "node-a"])
            // Services are listed at once, EndpointSlices only after 3 s: until then nothing is
            // programmed (no Service without endpoints refusing connections meanwhile).
            usleep(2_000_000)
            #expect(!d.ruleset(a.bed, a.node).contains("svcnat"), "\(daemon.log())")
            #expect(try follows(a, ["pod1"], within: 8), "\(daemon.log())")
            let log = daemon.log()
            #expect(log.contains("initial lists complete"))
            #expect(!log.contains("services, 0 endpoints"), "a sync before the lists were complete: \(log)")
        }

        @Test func credentialsAndTLSAreChecked() throws {
            var a = try api("apiauth", pods: 1)
            defer { a.bed.close() }
            try a.ctl("put", service("web", ip: "198.18.100.20"))
            try a.ctl("put", slice("web-a", of: "web", pods: [1]))
            func attempt(_ kubeconfig: String, until text: String) throws -> String {
                let daemon = try a.bed.startDaemon(a.node, ["--kubeconfig", kubeconfig, "--node-name", "node-a"])
                _ = within(8) { daemon.log().contains(text) }
                daemon.signal(SIGTERM)
                _ = daemon.waitExit(seconds: 5)
                return daemon.log()
            }
            // A wrong token: 401, named as such, and nothing programmed.
            let wrong = try attempt(try a.kubeconfig(token: "wrong"), until: "401 Unauthorized")
            #expect(wrong.contains("refused svcnat's credentials (401 Unauthorized"), "\(wrong)")
            #expect(!d.ruleset(a.bed, a.node).contains("svcnat"))
            // A client certificate instead of a token.
            let cert = try attempt(try a.kubeconfig(token: nil, clientCert: true), until: "sync (full")
            #expect(cert.contains("sync (full, initial lists complete)"), "\(cert)")
            #expect(try answers(a) == ["pod1"])
            // A server certificate from a CA the kubeconfig does not trust.
            let untrusted = try attempt(try a.kubeconfig(ca: "other-ca.crt"), until: "TLS")
            #expect(untrusted.contains("the server's certificate was not accepted"), "\(untrusted)")
            // An expired server certificate, from the right CA.
            a.server.signal(SIGKILL)
            _ = a.server.waitExit(seconds: 5)
            a.server = try a.startServer(["--cert", a.certs + "/expired.crt"])
            let expired = try attempt(try a.kubeconfig(), until: "TLS")
            #expect(expired.contains("the server's certificate was not accepted"), "\(expired)")
            #expect(!expired.contains("sync (full"))
        }
    }
}
