import Foundation
import NFTModel
import SvcnatModel
import SvcnatSources
import Testing

/// Seeded random mutations of real manifests through the decoder, the validator and the
/// translator: nothing may crash or hang, and every rejection must say where. CI runs a
/// bounded number; `scripts/fuzz` runs a million and prints the figures.
@Suite struct Fuzz {
    struct Rng {
        var state: UInt64
        mutating func next(_ n: Int) -> Int {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            return Int(state % UInt64(max(n, 1)))
        }
    }

    static let seeds: [String] = {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        let files = [
            dir.appendingPathComponent("Fixtures/services.yaml").path,
            dir.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("examples/codereview.yaml").path
        ]
        return files.compactMap { try? String(contentsOfFile: $0, encoding: .utf8) }
    }()

    static let replacements = [
        "0", "-1", "65536", "70000", "99999999999999999999", "1.5", "\"80\"", "null", "~", "[]", "{}",
        "None", "\"\"", "::1", "2001:db8::1", "198.18.100.256", "01.2.3.4", "TCP", "XTP", "sctp",
        "ClientIP", "Local", "LoadBalancer", "NodePort", "ExternalName", "a-b", "-bad-", "UPPER",
        "é", "\u{0}", "&anchor x", "*alias", "!!binary AAAA", "'quoted'", "{a: [b, {c: d}]}",
        "x" + String(repeating: "y", count: 300)
    ]

    static func mutate(_ text: String, _ rng: inout Rng) -> String {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        for _ in 0...rng.next(3) {
            guard !lines.isEmpty else { break }
            let i = rng.next(lines.count)
            switch rng.next(7) {
            case 0:  // replace a value
                if let colon = lines[i].firstIndex(of: ":") {
                    lines[i] = String(lines[i][...colon]) + " " + replacements[rng.next(replacements.count)]
                }
            case 1: lines.remove(at: i)
            case 2: lines.insert(lines[rng.next(lines.count)], at: i)
            case 3:  // break indentation
                lines[i] = String(repeating: " ", count: rng.next(6)) + lines[i].drop { $0 == " " }
            case 4:  // flip a byte
                var bytes = Array(lines[i].utf8)
                if !bytes.isEmpty { bytes[rng.next(bytes.count)] = UInt8(rng.next(128)) }
                lines[i] = String(decoding: bytes, as: UTF8.self)
            case 5: lines = Array(lines.prefix(i))  // truncate
            default:  // replace a whole line with a random key: value
                lines[i] =
                    "  "
                    + [
                        "clusterIP", "port", "targetPort", "protocol", "nodePort", "addresses", "name", "kind",
                        "apiVersion", "selector", "ports", "endpoints", "podIP", "externalIPs"
                    ][rng.next(14)]
                    + ": " + replacements[rng.next(replacements.count)]
            }
        }
        return lines.joined(separator: "\n")
    }

    /// Runs `iterations` inputs; returns (inputs, rejected, slowest seconds).
    static func run(iterations: Int, seed: UInt64) -> (Int, Int, Double) {
        var rng = Rng(state: seed)
        var rejected = 0
        var slowest = 0.0
        for _ in 0..<iterations {
            let input = mutate(seeds[rng.next(seeds.count)], &rng)
            let start = Date()
            var d = ManifestDecoder()
            d.decode(input, file: "fuzz.yaml")
            if !d.errors.isEmpty {
                rejected += 1
                for e in d.errors {
                    // Every rejection names the file, and the object and field when there is one.
                    precondition(e.description.hasPrefix("fuzz.yaml: "), "unlocated error: \(e)")
                    precondition(e.object == nil || e.field != nil || !e.message.isEmpty, "error without a field: \(e)")
                }
            } else {
                // What passes validation must translate.
                let state = ProxyState(d.state, nodeName: "node-a")
                _ = Translator(TranslatorConfig(clusterCIDRs: [IPPrefix("198.19.0.0/16")!])).ruleset(for: state).nftText
            }
            slowest = max(slowest, Date().timeIntervalSince(start))
        }
        return (iterations, rejected, slowest)
    }

    @Test func mutatedManifestsNeverCrashAndAlwaysSayWhere() {
        let n = Int(ProcessInfo.processInfo.environment["SVCNAT_FUZZ_ITERATIONS"] ?? "") ?? 20_000
        let start = Date()
        let (inputs, rejected, slowest) = Self.run(iterations: n, seed: 0x5eed)
        let seconds = Date().timeIntervalSince(start)
        print(
            "fuzz: \(inputs) inputs, \(rejected) rejected, \(inputs - rejected) accepted, \(Int(Double(inputs) / seconds)) "
                + "inputs/s, slowest \(String(format: "%.1f", slowest * 1000)) ms"
        )
        #expect(rejected > 0 && rejected < inputs)
        #expect(slowest < 2, "an input took \(slowest) s")
    }
}
