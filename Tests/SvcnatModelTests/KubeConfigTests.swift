import Foundation
import SvcnatKube
import SvcnatSources
import Testing
import Yams

/// kubeconfig as kubectl reads it, the in-cluster configuration, API objects as the API server
/// returns them, and the RBAC svcnat ships. No root, no server.
@Suite struct KubeConfigTests {
    let dir = NSTemporaryDirectory() + "svcnat-kubeconfig-\(getpid())-\(Int.random(in: 0..<1_000_000))"

    func write(_ name: String, _ text: String) throws -> String {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    let text = """
        apiVersion: v1
        kind: Config
        current-context: node
        contexts:
        - {name: node, context: {cluster: prod, user: node-cert}}
        - {name: admin, context: {cluster: prod, user: admin-token, namespace: demo}}
        - {name: broken, context: {cluster: missing, user: admin-token}}
        clusters:
        - name: prod
          cluster:
            server: https://198.18.0.10:6443/
            certificate-authority: pki/ca.crt
        users:
        - name: node-cert
          user:
            client-certificate-data: Q0VSVA==
            client-key: /abs/key.pem
        - name: admin-token
          user: {token: abc123}
        """

    @Test func contextsClustersAndUsers() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/pki", withIntermediateDirectories: true)
        _ = try write("pki/ca.crt", "CA PEM")
        // Relative files are relative to the kubeconfig; a missing file is named.
        let path = try write("config", text)
        #expect(throws: KubeConfigError.self) { try KubeConfig.load(path: path) }  // /abs/key.pem does not exist
        do { _ = try KubeConfig.load(path: path) } catch { #expect("\(error)".contains("cannot read client-key /abs/key.pem")) }

        let admin = try KubeConfig.load(path: path, context: "admin")
        #expect(admin.server == "https://198.18.0.10:6443")
        #expect(admin.caPEM == Array("CA PEM".utf8))
        #expect(try admin.currentToken() == "abc123")
        #expect(admin.clientCertificatePEM == nil && !admin.insecureSkipTLSVerify)
        #expect(admin.origin == "kubeconfig \(path), context admin")

        let keyPath = try write("key.pem", "KEY")
        let withKey = try KubeConfig.parse(text.replacingOccurrences(of: "/abs/key.pem", with: keyPath), path: path)
        #expect(withKey.clientCertificatePEM == Array("CERT".utf8) && withKey.clientKeyPEM == Array("KEY".utf8))

        for (context, message) in [("broken", "clusters has no entry named \"missing\""), ("nope", "contexts has no entry named \"nope\"")]
        {
            do { _ = try KubeConfig.parse(text, path: path, context: context); Issue.record("\(context) accepted") } catch {
                #expect("\(error)".contains(message), "\(error)")
            }
        }
        do {
            _ = try KubeConfig.parse(text.replacingOccurrences(of: "current-context: node\n", with: ""), path: path);
            Issue.record("accepted")
        } catch { #expect("\(error)".contains("no current-context")) }
    }

    @Test func tokenFilesAreReadForEachRequest() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let token = try write("token", "first\n")
        var c = APIConfig(server: "https://198.18.0.10:6443", origin: "test")
        c.tokenFile = token
        #expect(try c.currentToken() == "first")
        _ = try write("token", "second")
        #expect(try c.currentToken() == "second")
    }

    @Test func inClusterConfiguration() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try KubeConfig.inCluster(environment: [:], accountDir: dir) == nil)
        _ = try write("ca.crt", "CA")
        _ = try write("token", "sa-token")
        let c = try #require(
            try KubeConfig.inCluster(
                environment: ["KUBERNETES_SERVICE_HOST": "198.18.0.1", "KUBERNETES_SERVICE_PORT": "443"], accountDir: dir))
        let token = try c.currentToken()
        #expect(c.server == "https://198.18.0.1:443" && c.caPEM == Array("CA".utf8) && token == "sa-token")
        let v6 = try #require(
            try KubeConfig.inCluster(
                environment: ["KUBERNETES_SERVICE_HOST": "2001:db8::1", "KUBERNETES_SERVICE_PORT": "443"], accountDir: dir))
        #expect(v6.server == "https://[2001:db8::1]:443")
    }

    /// A list as the API server sends it (items without kind), and watch events.
    @Test func apiListsAndWatchEvents() throws {
        let list = """
            {"kind": "ServiceList", "apiVersion": "v1", "metadata": {"resourceVersion": "4711"},
             "items": [{"metadata": {"name": "web", "namespace": "demo", "resourceVersion": "4700", "uid": "u1",
                                     "labels": {"app": "web"}, "managedFields": [{"manager": "x"}]},
                        "spec": {"clusterIP": "198.18.100.20", "clusterIPs": ["198.18.100.20"], "ipFamilies": ["IPv4"],
                                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
                        "status": {"loadBalancer": {}}},
                       {"metadata": {"name": "Bad_Name", "namespace": "demo"}, "spec": {"clusterIP": "198.18.100.21",
                        "ports": [{"port": 80}]}}]}
            """
        let l = try APIObjects.list(list, kind: "Service", apiVersion: "v1", source: "api")
        #expect(l.resourceVersion == "4711" && l.objects.count == 1 && l.objects[0].key == "demo/web")
        #expect(l.objects[0].state.services.first?.ports.first?.port == 80 && l.objects[0].resourceVersion == "4700")
        #expect(l.errors.count == 1 && "\(l.errors[0])".contains("Bad_Name"))
        #expect(l.failedKeys == ["demo/Bad_Name"] && l.continueToken == nil)

        let (bookmark, _) = try APIObjects.event(
            #"{"type": "BOOKMARK", "object": {"kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": "4800"}}}"#,
            kind: "Service", apiVersion: "v1", source: "api")
        guard case .bookmark("4800")? = bookmark else { Issue.record("\(String(describing: bookmark))"); return }
        let (gone, _) = try APIObjects.event(
            #"{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}}"#,
            kind: "Service", apiVersion: "v1", source: "api")
        guard case .error(410, "too old")? = gone else { Issue.record("\(String(describing: gone))"); return }
        let (node, _) = try APIObjects.event(
            #"{"type": "MODIFIED", "object": {"kind": "Node", "apiVersion": "v1", "metadata": {"name": "node-a", "#
                + #""labels": {"topology.kubernetes.io/zone": "z1"}}, "#
                + #""status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.1"}]}}}"#,
            kind: "Node", apiVersion: "v1", source: "api")
        guard case .modified(let n)? = node else { Issue.record("\(String(describing: node))"); return }
        #expect(n.node?.name == "node-a" && n.node?.zone == "z1" && n.node?.addresses == ["198.18.0.1"])
        #expect(throws: APIObjects.DecodeError.self) { try APIObjects.event("{not json", kind: "Service", apiVersion: "v1", source: "api") }
    }

    /// deploy/rbac.yaml grants get, list and watch on exactly what svcnat reads.
    @Test func rbacGrantsOnlyWhatSvcnatReads() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let text = try String(contentsOf: root.appendingPathComponent("deploy/rbac.yaml"), encoding: .utf8)
        let docs = try Yams.load_all(yaml: text).map { $0 as! [String: Any] }
        let role = try #require(docs.first { $0["kind"] as? String == "ClusterRole" })
        var granted: [String: Set<String>] = [:]
        for rule in role["rules"] as! [[String: Any]] {
            for r in rule["resources"] as! [String] { granted[r, default: []].formUnion(rule["verbs"] as! [String]) }
        }
        #expect(
            granted == ["services": ["get", "list", "watch"], "nodes": ["get", "list", "watch"], "endpointslices": ["get", "list", "watch"]]
        )
        let ds =
            try Yams.load(yaml: String(contentsOf: root.appendingPathComponent("deploy/daemonset.yaml"), encoding: .utf8)) as! [String: Any]
        #expect("\(ds)".contains("NET_ADMIN") && "\(ds)".contains("serviceAccountName"))
    }
}
