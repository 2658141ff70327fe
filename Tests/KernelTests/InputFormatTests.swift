import Foundation
import Testing

extension RootTests {
    /// The same objects as kubectl's JSON on standard input and as a YAML file give the same
    /// tables, as nft reads them back.
    @Suite(.serialized)
    struct InputFormatTests {
        static let yaml = """
            apiVersion: v1
            kind: Service
            metadata: {name: web, namespace: shop}
            spec:
              clusterIP: 198.18.100.20
              type: NodePort
              ports:
              - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
              - name: dns
                protocol: UDP
                port: 53
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata:
              name: web-1
              namespace: shop
              labels: {kubernetes.io/service-name: web}
            addressType: IPv4
            ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
            endpoints:
            - addresses: [198.19.1.2]
              conditions: {ready: true}
            - addresses: ["198.19.2.2"]
              conditions: {ready: false, serving: true, terminating: true}
            - addresses: ['198.19.3.2']   # a comment
              conditions: {ready: true}

            """

        /// The same, as `kubectl get -o json` writes it: keys sorted (items before kind), with
        /// metadata svcnat does not read.
        static let json = #"""
            {"apiVersion": "v1", "items": [
              {"apiVersion": "v1", "kind": "Service",
               "metadata": {"annotations": {"a": "{\"x\": [1]}"}, "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
                            "name": "web", "namespace": "shop", "uid": "u1"},
               "spec": {"clusterIP": "198.18.100.20", "type": "NodePort",
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080},
                                  {"name": "dns", "protocol": "UDP", "port": 53}]},
               "status": {"loadBalancer": {}}},
              {"addressType": "IPv4", "apiVersion": "discovery.k8s.io/v1",
               "endpoints": [{"addresses": ["198.19.1.2"], "conditions": {"ready": true}},
                             {"addresses": ["198.19.2.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                             {"addresses": ["198.19.3.2"], "conditions": {"ready": true}}],
               "kind": "EndpointSlice",
               "metadata": {"labels": {"kubernetes.io/service-name": "web"}, "name": "web-1", "namespace": "shop"},
               "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]}
            ], "kind": "List", "metadata": {"resourceVersion": ""}}
            """#

        @Test func jsonOnStandardInputAndAYAMLFileGiveTheSameTables() throws {
            let bed = Testbed("formats")
            defer { bed.close() }
            let fromJSON = try bed.addNamespace("json")
            let fromYAML = try bed.addNamespace("yaml")
            let file = try bed.writeManifest(Self.yaml)
            let a = try bed.svcnat(fromJSON, ["apply", "-f", "-"], stdin: Self.json)
            #expect(a.code == 0, "\(a.err)")
            #expect(a.out.contains("1 services (2 ports), 4 endpoints"), "\(a.out)")
            let b = try bed.svcnat(fromYAML, ["apply", "-f", file])
            #expect(b.code == 0, "\(b.err)")
            let listed = try bed.sh(fromJSON, ["nft", "list", "table", "ip", "svcnat"])
            #expect(listed.contains("198.19.1.2") && listed.contains("198.19.3.2") && listed.contains("30080"), "\(listed)")
            #expect(listed == (try bed.sh(fromYAML, ["nft", "list", "table", "ip", "svcnat"])))
            // The YAML, applied over the JSON's tables, changes nothing.
            let again = try bed.svcnat(fromJSON, ["apply", "-f", file])
            #expect(again.code == 0 && again.out.contains("no changes"), "\(again.out)")
            // A JSON syntax error names line and column, and leaves the kernel as it was.
            let broken = Self.json.replacingOccurrences(of: #""port": 53}"#, with: #""port": 53"#)
            let refused = try bed.svcnat(fromJSON, ["apply", "-f", "-"], stdin: broken)
            #expect(refused.code != 0)
            #expect(refused.err.contains("<stdin>: not valid JSON: line 7, column"), "\(refused.err)")
            #expect(try bed.sh(fromJSON, ["nft", "list", "table", "ip", "svcnat"]) == listed)
        }
    }
}
