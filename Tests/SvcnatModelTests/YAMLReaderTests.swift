import Foundation
import SvcnatModel
import Testing
import Yams

@testable import SvcnatSources

/// The fast YAML reader against Yams (libyaml): wherever it takes a text, its documents are the
/// ones Yams reads; where Yams refuses a text, it does not take it.
@Suite struct YAMLReading {
    /// Yams' documents as values, or nil when Yams refuses the text.
    static func yams(_ text: String) -> [Value]? {
        do {
            let parser = try Parser(yaml: text, resolver: .basic, encoding: .utf8)
            var budget = Value.Budget(forInputBytes: text.utf8.count)
            var out: [Value] = []
            while let node = try parser.nextRoot() { out.append(try Value.convert(node, &budget)) }
            return out
        } catch {
            return nil
        }
    }

    static func fast(_ text: String) -> [Value]? {
        var r = YAMLReader(Array(text.utf8))
        return r.read()
    }

    static func same(_ a: Value, _ b: Value) -> Bool {
        switch (a, b) {
        case (.scalar(let x, let p), .scalar(let y, let q)): x == y && p == q
        case (.sequence(let x), .sequence(let y)): x.count == y.count && zip(x, y).allSatisfy { same($0, $1) }
        case (.mapping(let x), .mapping(let y)):
            x.count == y.count && zip(x, y).allSatisfy { $0.key == $1.key && same($0.value, $1.value) }
        default: false
        }
    }

    /// Where the fast reader answers, Yams gives the same documents; `mustTake` says the fast
    /// reader has to answer (the text is in its subset).
    static func check(_ text: String, mustTake: Bool = false, sourceLocation: SourceLocation = #_sourceLocation) {
        let want = yams(text)
        guard let got = fast(text) else {
            #expect(!mustTake, "the fast reader left this to Yams:\n\(text)", sourceLocation: sourceLocation)
            return
        }
        guard let want else {
            Issue.record("Yams refuses what the fast reader took:\n\(text)\n\(got)", sourceLocation: sourceLocation)
            return
        }
        #expect(
            got.count == want.count && zip(got, want).allSatisfy { same($0, $1) }, "\(text)\nfast: \(got)\nyams: \(want)",
            sourceLocation: sourceLocation)
    }

    @Test func theFixturesAndExamplesAreTakenAndReadAsYamsReadsThem() throws {
        for path in [fixtures + "/services.yaml", fixtures + "/dualstack.yaml", examplesDir + "/codereview.yaml"] {
            Self.check(try String(contentsOfFile: path, encoding: .utf8), mustTake: true)
        }
    }

    @Test(arguments: [
        "a: 1\nb: two\n", "a: 1\n---\n", "---\n---\na: 1\n", "---\na: 1\n---\nb: 2\n", "# only a comment\n", "",
        "---\n", "a:\n  - x\n  - y\nb:\n- p\n- q\nc: 3\n", "- a: 1\n  b: 2\n- - x\n  - y\n-\n  k: v\n- \n",
        "k: 'it''s' \nj: \"tab\\there \\\"q\\\" \\u00e9 \\x41\"\n", "url: http://x.example/a#b\nimage: nginx:1.25 # c\nm: a #b\n",
        "e:\nf: ~\ng: null\nh: ''\ni: \"\"\n", "flow: {a: 1, b: [x, 'y', \"z\"], c: {}}\nseq: [ ]\n",
        "multi: [a,\n  b,\n  c]\nnext: 1\n", "ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]\n",
        "a: 1\r\nb:\r\n  c: 2\r\n", "  indented: root\n  more: 2\n", "key with spaces: v\n\"quoted key\": 1\n'single': 2\n",
        "n: -1\nf: 1.5\no: 0o17\nx: 0x1F\ny: yes\nt: True\n", "deep:\n  deeper:\n    deepest:\n      - a\n      - b: [1, {c: d}]\n",
        "s: a  b   c\nt: trailing   \n", "-1\n", "just a scalar\n", "[a, b]\n", "{a: b}\n",
        "labels:\n  app.kubernetes.io/name: web\n  kubernetes.io/service-name: web\n"
    ])
    func subsetTextsAreTakenAndReadAsYamsReadsThem(text: String) {
        Self.check(text, mustTake: true)
    }

    /// Outside the subset, or not YAML at all: left to Yams, never read differently.
    @Test(arguments: [
        "a: &x 1\nb: *x\n", "base: &b {p: 1}\nd:\n  <<: *b\n", "a: !!str 1\n", "a: |\n  line\n", "a: >\n  folded\n",
        "a: plain\n  continued\n", "a: \"two\n  lines\"\n", "%YAML 1.1\n---\na: 1\n", "a: 1\na: 2\n", "a:\n\t- tab\n",
        "? complex\n: key\n", "a: b: c\n", "a: [1, 2,]\n", "a: {b}\n", "--- {a: 1}\n", "a: 1\n b: 2\n", "- a\nb: 1\n",
        "a: [1\n", "a: 'unclosed\n", "k: v\n...\n", "a: @x\n", "a: `x`\n", "[a: b]\n", "a: {x: }\n", "\u{FEFF}a: 1\n",
        "a: [x\n  y]\n", "k: - a\n", ": v\n", "a:\n  b: 1\n c: 2\n"
    ])
    func otherTextsAreLeftToYams(text: String) {
        Self.check(text)
    }

    /// Random manifests in random styles: block and flow, quoted and plain, comments, blank
    /// lines and documents. Each is read as Yams reads it, and most are in the subset.
    @Test func randomDocumentsAreReadAsYamsReadsThem() {
        var rng = Incremental.Rng(state: 2026)
        let words = ["web", "80", "8080", "-1", "true", "null", "~", "a b", "x:y", "http://h/p", "é", "", "#no", "1.5", "v1", "a#b"]
        func scalar() -> String {
            let w = words[rng.next(words.count)]
            switch rng.next(4) {
            case 0: return "'" + w.replacingOccurrences(of: "'", with: "''") + "'"
            case 1: return "\"" + w + "\""
            default:
                // Plain only where YAML reads it back as the same text.
                let needsQuotes = w.isEmpty || w.hasPrefix("#") || w == "~" || w.hasPrefix("-") && w.count == 1
                return needsQuotes ? "'\(w)'" : w
            }
        }
        func flowValue(_ d: Int) -> String {
            switch d > 2 ? 0 : rng.next(3) {
            case 0: return scalar()
            case 1: return "[" + (0..<rng.next(3)).map { _ in flowValue(d + 1) }.joined(separator: ", ") + "]"
            default: return "{" + (0..<rng.next(3)).map { "k\($0): " + flowValue(d + 1) }.joined(separator: ", ") + "}"
            }
        }
        func block(_ indent: Int, _ d: Int) -> String {
            let pad = String(repeating: " ", count: indent)
            var out = ""
            if d > 3 || rng.next(2) == 0 {
                for k in 0..<(1 + rng.next(3)) {
                    let key = rng.next(5) == 0 ? "\"k \(k)\"" : "k\(k)"
                    let comment = rng.next(4) == 0 ? "  # note" : ""
                    switch d > 3 ? 0 : rng.next(4) {
                    case 0: out += "\(pad)\(key): \(scalar())\(comment)\n"
                    case 1: out += "\(pad)\(key): \(flowValue(0))\n"
                    case 2: out += "\(pad)\(key):\(comment)\n" + block(indent + 2, d + 1)
                    default: out += "\(pad)\(key):\n" + sequence(rng.next(2) == 0 ? indent : indent + 2, d + 1)
                    }
                    if rng.next(6) == 0 { out += "\n" }
                }
            } else {
                out += sequence(indent, d + 1)
            }
            return out
        }
        func sequence(_ indent: Int, _ d: Int) -> String {
            let pad = String(repeating: " ", count: indent)
            var out = ""
            for _ in 0..<(1 + rng.next(3)) {
                switch d > 3 ? 0 : rng.next(3) {
                case 0: out += "\(pad)- \(rng.next(2) == 0 ? scalar() : flowValue(0))\n"
                case 1:
                    // A compact mapping: its first key on the dash's line.
                    let inner = block(indent + 2, d + 1)
                    out += "\(pad)- " + inner.dropFirst(indent + 2)
                default: out += "\(pad)-\n" + block(indent + 2, d + 1)
                }
            }
            return out
        }
        var taken = 0
        for _ in 0..<400 {
            let text = (0..<(1 + rng.next(3))).map { i in (i > 0 || rng.next(2) == 0 ? "---\n" : "") + block(0, 0) }.joined()
            Self.check(text)
            if Self.fast(text) != nil { taken += 1 }
        }
        #expect(taken > 300, "\(taken) of 400 taken")
    }

    @Test func aFolderOfManifestsDecodesAsWithYamsAlone() throws {
        let text = try String(contentsOfFile: fixtures + "/services.yaml", encoding: .utf8)
        var fast = ManifestDecoder()
        fast.decode(text, file: "s.yaml")
        var slow = ManifestDecoder()
        _ = slow.decodeWithYams(text, file: "s.yaml")
        #expect(fast.state == slow.state && fast.warnings == slow.warnings && fast.errors == slow.errors)
        #expect(!fast.state.services.isEmpty)
    }
}
