import Foundation
import Yams

/// svcnat's decoders beside Foundation's and Yams' on the same manifest file, in one run: what
/// `svcnat bench-decode FILE` prints (scripts/bench-decode runs it). Each figure is the best of
/// `runs`.
public enum DecodeBenchmark {
    public static func report(file: String, runs: Int = 3) throws -> String {
        guard case .text(let text) = ManifestSource.readText(file) else {
            throw InputErrors(errors: [.init(file: file, message: "cannot be read")])
        }
        let bytes = Array(text.utf8)
        let data = Data(bytes)
        let json = JSONReader.looksLikeJSON(bytes, file: file)
        var rows: [(String, Double, String)] = []
        func time(_ name: String, _ what: String, _ body: () throws -> Void) rethrows {
            var best = Double.infinity
            for _ in 0..<runs {
                let t0 = DispatchTime.now().uptimeNanoseconds
                try body()
                best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            }
            rows.append((name, best, what))
        }
        var services = 0
        try time("svcnat, whole decode", "svcnat's model values, validated (what apply does)") {
            var d = ManifestDecoder()
            d.decode(text, file: file)
            guard d.errors.isEmpty else { throw InputErrors(errors: d.errors) }
            services = d.state.services.count
        }
        if json {
            try time("svcnat JSONReader alone", "generic values of the fields svcnat reads, item by item, not kept") {
                var r = JSONReader(bytes)
                while let (doc, items) = try r.nextLocatingItems() {
                    _ = doc
                    for offset in items { _ = try JSONReader.item(bytes, at: offset) }
                }
            }
            try time("Foundation JSONSerialization", "one generic tree of the whole document (NSDictionary/NSArray)") {
                _ = try JSONSerialization.jsonObject(with: data)
            }
            try time("Foundation JSONDecoder", "Codable structs of the fields svcnat reads, unvalidated") {
                _ = try JSONDecoder().decode(KubeList.self, from: data)
            }
        } else {
            try time("svcnat YAMLReader alone", "generic values, every document") {
                var r = YAMLReader(bytes)
                guard r.read() != nil else { throw InputErrors(errors: [.init(file: file, message: "outside the fast reader's subset")]) }
            }
        }
        try time("Yams, whole decode", "Yams' node tree, then svcnat's model values (svcnat before this change)") {
            var d = ManifestDecoder()
            if let why = d.decodeWithYams(text, file: file) { throw InputErrors(errors: [.init(file: file, message: why)]) }
        }
        try time("Yams alone", "Yams' node tree of every document") {
            let parser = try Parser(yaml: text, resolver: .basic, encoding: .utf8)
            while try parser.nextRoot() != nil {}
        }
        var out = "\(file): \(String(format: "%.1f", Double(bytes.count) / 1e6)) MB, \(services) Services; best of \(runs)\n\n"
        out += "| decoder | seconds | MB/s | what it builds |\n| --- | --- | --- | --- |\n"
        for (name, s, what) in rows {
            out += "| \(name) | \(String(format: "%.3f", s)) | \(String(format: "%.0f", Double(bytes.count) / 1e6 / s)) | \(what) |\n"
        }
        return out
    }

    // The fields svcnat reads, as Codable structs, for JSONDecoder.
    struct KubeList: Decodable { var items: [Item] }
    struct Item: Decodable {
        var apiVersion: String
        var kind: String
        var metadata: Meta
        var spec: Spec?
        var addressType: String?
        var endpoints: [Endpoint]?
        var ports: [Port]?
    }
    struct Meta: Decodable {
        var name: String
        var namespace: String?
        var labels: [String: String]?
    }
    struct Spec: Decodable {
        var clusterIP: String?
        var clusterIPs: [String]?
        var type: String?
        var selector: [String: String]?
        var ports: [Port]?
        var sessionAffinity: String?
        var externalIPs: [String]?
        var internalTrafficPolicy: String?
        var externalTrafficPolicy: String?
    }
    struct Port: Decodable {
        var name: String?
        var port: Int?
        var `protocol`: String?
        var targetPort: IntOrString?
        var nodePort: Int?
    }
    enum IntOrString: Decodable {
        case int(Int), string(String)
        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let i = try? c.decode(Int.self) { self = .int(i) } else { self = .string(try c.decode(String.self)) }
        }
    }
    struct Endpoint: Decodable {
        var addresses: [String]
        var conditions: Conditions?
        var nodeName: String?
        var zone: String?
    }
    struct Conditions: Decodable {
        var ready: Bool?
        var serving: Bool?
        var terminating: Bool?
    }
}
