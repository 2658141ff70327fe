import Foundation
import SvcnatModel
import SvcnatSources
import Testing

/// An EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time`, read from JSON (the
/// API's and files') and YAML alike, against Foundation's own reading of the same times.
@Suite struct TriggerTimes {
    @Test(arguments: [
        "2026-12-03T05:14:08Z", "1970-01-01T00:00:00Z", "2000-02-29T23:59:59Z", "2024-01-02T03:04:05.25Z",
        "2026-12-03T07:14:08+02:00", "2026-12-03T01:44:08-03:30", "1999-12-31T23:59:59.999999999Z"
    ])
    func secondsAgreeWithFoundation(_ text: String) throws {
        let f = ISO8601DateFormatter()
        f.formatOptions = text.contains(".") ? [.withInternetDateTime, .withFractionalSeconds] : [.withInternetDateTime]
        // Foundation keeps milliseconds; the reader keeps the fraction as written.
        let want = try #require(f.date(from: text.count > 30 ? String(text.prefix(23)) + "Z" : text)).timeIntervalSince1970
        let got = try #require(ObjectMeta.seconds(rfc3339: text))
        #expect(abs(got - want) < 0.0011, "\(text): \(got) vs \(want)")
    }

    @Test(arguments: ["", "2026-12-03", "2026-13-03T05:14:08Z", "2026-12-03T05:14:08", "2026-12-03T05:14:08Zjunk", "yesterday"])
    func refusesWhatIsNotATime(_ text: String) {
        #expect(ObjectMeta.seconds(rfc3339: text) == nil)
    }

    @Test func readFromJSONAndYAMLOfASliceOnly() throws {
        let json = #"""
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "web-1", "namespace": "demo", "labels": {"kubernetes.io/service-name": "web"},
               "annotations": {"other": {"deep": [1, 2]}, "endpoints.kubernetes.io/last-change-trigger-time": "2026-12-03T05:14:08Z", "more": "x"}},
             "addressType": "IPv4", "endpoints": [{"addresses": ["198.19.1.2"]}], "ports": [{"port": 8080}]}
            """#
        let yaml = """
            apiVersion: v1
            kind: Service
            metadata:
              name: web
              namespace: demo
              annotations: {endpoints.kubernetes.io/last-change-trigger-time: "2026-12-03T05:14:08Z"}
            spec: {clusterIP: 198.18.100.20, ports: [{port: 80}]}
            """
        var d = ManifestDecoder()
        d.decode(json, file: "slice.json")
        d.decode(yaml, file: "svc.yaml")
        #expect(d.errors.isEmpty, "\(d.errors)")
        #expect(d.state.endpointSlices.first?.meta.lastChangeTriggerTime == 1_796_274_848)
        // A Service's annotation has no meaning here.
        #expect(d.state.services.first?.meta.lastChangeTriggerTime == nil)
    }
}
