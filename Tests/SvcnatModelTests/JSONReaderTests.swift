import Foundation
import SvcnatCore
import SvcnatModel
import Testing
import Yams

@testable import SvcnatSources

/// The JSON reader against two outside readers: Foundation's JSONSerialization for the values,
/// and the YAML path (Yams, which reads JSON as YAML) for what the decoder makes of them.
@Suite struct JSONReading {
    /// Foundation's reading of `text` as plain values, in the reader's terms.
    static func foundation(_ text: String) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])
    }

    /// Whether the reader's value is Foundation's: mappings with the same keys, lists, strings
    /// as strings (quoted), numbers and booleans as plain scalars of the same value.
    static func same(_ v: Value, _ f: Any) -> Bool {
        switch v {
        case .mapping(let m):
            guard let d = f as? [String: Any], d.count == Set(m.map(\.key)).count else { return false }
            return m.allSatisfy { member in d[member.key].map { same(v[key: member.key]!, $0) } ?? false }
        case .sequence(let a):
            guard let l = f as? [Any], l.count == a.count else { return false }
            return zip(a, l).allSatisfy { same($0, $1) }
        case .scalar(let s, plain: false):
            return (f as? String) == s
        case .scalar(let s, plain: true):
            if s == "null" { return f is NSNull }
            guard let n = f as? NSNumber else { return false }
            if s == "true" || s == "false" { return n == NSNumber(value: s == "true") }
            return Double(s) == n.doubleValue
        }
    }

    /// The reader refuses `text` with an error that contains `want`.
    static func expectRefused(_ text: String, saying want: String, sourceLocation: SourceLocation = #_sourceLocation) {
        var r = JSONReader(Array(text.utf8))
        do {
            _ = try r.single()
            Issue.record("accepted \(text)", sourceLocation: sourceLocation)
        } catch {
            #expect("\(error)".contains(want), "\(error)", sourceLocation: sourceLocation)
        }
    }

    @Test(arguments: [
        #"{"a": "plain", "b": "tab\there \"quoted\" back\\slash \/ \b\f\n\r", "c": "\u00e9\u4e2d\ud83d\ude00 é😀"}"#,
        #"[0, -1, 3.25, 1e3, -2.5E-2, 8080, true, false, null, "", [], {}]"#,
        #"{"nested": {"deeper": [{"x": [1, [2, [3]]]}]}, "key with spaces": "v", "": "empty key"}"#,
        "  \n\t{\"spaced\" :\n[ 1 ,2 ] }  \n",
        #""a lone string""#
    ])
    func valuesAreFoundations(text: String) throws {
        var r = JSONReader(Array(text.utf8))
        let v = try #require(try r.single())
        #expect(Self.same(v, try Self.foundation(text)), "\(v)")
    }

    /// Trailing commas, which Go's decoder (the API server's, kubectl's) refuses and Foundation
    /// takes.
    @Test(arguments: [
        ("{\"a\": 1,\n \"b\": [1, 2,]\n}", "line 2, column 13: expected a value"),
        (
            "{\"apiVersion\": \"v1\",\n \"kind\": \"Service\",\n \"metadata\": {\"name\": \"a\",}}",
            "line 3, column 27: expected a quoted key"
        )
    ])
    func trailingCommasAreRefusedAsGoRefusesThem(text: String, want: String) throws {
        Self.expectRefused(text, saying: want)
    }

    @Test(arguments: [
        ("{\"a\": \"never closed\n", "line 1, column 20: a control character in a string"),
        ("{\"a\": \"never closed", "line 1, column 7: a string without its closing quote"),
        ("{\"a\" 1}", "line 1, column 6: expected ':' after the key \"a\""),
        ("[1 2]", "line 1, column 4: expected ',' or ']'"),
        ("{\"port\": 080}", "line 1, column 10: a number with a leading zero is not JSON"),
        ("{\"a\": tru}", "line 1, column 7: expected a value"),
        ("{\"a\": \"\\x\"}", "line 1, column 9: an unknown escape \\x"),
        ("{\"a\": \"\\ud83d\"}", "a lone UTF-16 surrogate"),
        ("{\"a\": 1} trailing", "line 1, column 10: unexpected text after the JSON value"),
        ("{\"a\": [1, 2", "line 1, column 12: unexpected end of input")
    ])
    func syntaxErrorsNameLineAndColumn(text: String, want: String) throws {
        // Foundation refuses each of them too.
        #expect(throws: (any Error).self) { try Self.foundation(text) }
        Self.expectRefused(text, saying: want)
    }

    /// A list's items are first skipped by their brackets alone; a broken item is still
    /// reported where it breaks, also when its brackets close somewhere else or a later item
    /// breaks the list's own syntax.
    @Test(arguments: [
        (#"{"kind": "List", "items": [{"a": [1}, {"b": 2}]}"#, "line 1, column 36: expected ',' or ']'"),
        (#"{"kind": "List", "items": [{"a": 1}, {"b" 2}, {"c": 3]}"#, "line 1, column 43: expected ':' after the key \"b\""),
        (#"{"kind": "List", "items": [{"a": "\"}]}"#, "line 1, column 34: a string without its closing quote"),
        (#"{"kind": "List", "items": [{"a": 1}}, {"b": 2}]}"#, "line 1, column 36: expected ',' or ']'")
    ])
    func aBrokenItemIsReportedWhereItBreaks(text: String, want: String) throws {
        #expect(throws: (any Error).self) { try Self.foundation(text) }
        let d = decode(text, file: "l.json")
        #expect(d.errors.map(\.description) == ["l.json: not valid JSON: \(want)"])
        #expect(throws: (any Error).self) { _ = try APIObjects.list(text, kind: "Service", apiVersion: "v1", source: "api") }
    }

    @Test func deepNestingIsRefusedNotAStackOverflow() {
        let text = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        var r = JSONReader(Array(text.utf8))
        #expect(throws: JSONReader.SyntaxError.self) { _ = try r.single() }
        let d = decode("{\"items\": " + text + "}", file: "deep.json")
        #expect(d.errors.map(\.description) == ["deep.json: not valid JSON: line 1, column 210: nested deeper than 200 levels"])
    }

    /// Every YAML fixture, turned into JSON by Yams and Foundation, decodes to the same state,
    /// warnings and errors through the JSON reader as through the YAML path.
    @Test(arguments: ["services.yaml", "dualstack.yaml", "../../examples/codereview.yaml"])
    func jsonDecodesAsTheSameManifestsInYAML(name: String) throws {
        let path = name.hasPrefix("../") ? examplesDir + "/codereview.yaml" : fixtures + "/" + name
        let yaml = try String(contentsOfFile: path, encoding: .utf8)
        let docs = try Array(Yams.load_all(yaml: yaml)).compactMap { $0 }
        let list: [String: Any] = ["apiVersion": "v1", "kind": "List", "items": docs]
        let json = String(decoding: try JSONSerialization.data(withJSONObject: list, options: [.sortedKeys]), as: UTF8.self)
        // Sorted keys put `items` before `kind`, as kubectl writes them: the reader must stream
        // the items once it has read the kind after them.
        #expect(json.range(of: "\"items\"")!.lowerBound < json.range(of: "\"kind\":\"List\"")!.lowerBound)
        let fromYAML = decode(yaml, file: "m")
        let fromJSON = decode(json, file: "m.json")
        #expect(!fromYAML.state.services.isEmpty)
        #expect(fromJSON.state == fromYAML.state)
        #expect(fromJSON.errors == fromYAML.errors)
        #expect(fromJSON.warnings == fromYAML.warnings)
    }

    @Test func aSyntaxErrorAfterGoodItemsTakesTheWholeFileBack() {
        let good =
            #"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"clusterIP": "198.18.100.1", "ports": [{"port": 80}]}}"#
        var d = ManifestDecoder()
        d.decode("{\"items\": [\(good), \(good.replacingOccurrences(of: "\"a\"", with: "\"b\""))], \"kind\": \"List\"", file: "cut.json")
        #expect(d.state.services.isEmpty)
        #expect(
            d.errors.map(\.description) == ["cut.json: not valid JSON: line 1, column 291: unexpected end of input, expected ',' or '}'"])
        // The file's names are free again: the same Service from another file is no duplicate.
        d.decode(good, file: "other.json")
        #expect(d.state.services.map(\.meta.key) == ["default/a"])
        #expect(d.errors.count == 1)
    }

    @Test func itemsOfAnObjectThatIsNoListStayData() {
        let d = decode(
            #"{"apiVersion": "v1", "items": [{"kind": "Service"}], "kind": "ConfigMap", "metadata": {"name": "c"}}"#, file: "c.json")
        #expect(d.errors.isEmpty)
        #expect(d.state.services.isEmpty)
        #expect(d.skipped.map(\.description) == ["c.json: ConfigMap default/c: kind ConfigMap is not used by svcnat; skipped"])
    }

    @Test func yamlFlowStyleAndJSONBetweenDashesStayYAML() {
        #expect(!JSONReader.looksLikeJSON(Array("{apiVersion: v1, kind: Service}".utf8), file: "f.yaml"))
        #expect(!JSONReader.looksLikeJSON(Array("[a, b]".utf8), file: "f.yaml"))
        #expect(JSONReader.looksLikeJSON(Array(" \n{\"kind\": 1}".utf8), file: "f.yaml"))
        #expect(JSONReader.looksLikeJSON(Array("kind: x".utf8), file: "f.JSON"))
        let d = decode(
            "{apiVersion: v1, kind: Service, metadata: {name: a}, spec: {clusterIP: 198.18.100.1, ports: [{port: 80}]}}", file: "flow.yaml")
        #expect(d.errors.isEmpty && d.state.services.count == 1)
        // A .json file is JSON: YAML is not tried.
        let j = decode("{apiVersion: v1}", file: "flow.json")
        #expect(j.errors.map(\.description) == ["flow.json: not valid JSON: line 1, column 2: expected a quoted key"])
    }

    @Test func unreadMetadataIsScannedNotBuilt() throws {
        var r = JSONReader(
            Array(
                #"{"metadata": {"name": "a", "annotations": {"x": "y"}, "managedFields": [{"f": {}}]}, "spec": {"annotations": 1}}"#.utf8))
        let v = try #require(try r.single())
        // Of the annotations, only the trigger time is built.
        #expect(v[key: "metadata"]?[key: "annotations"]?[key: "x"] == nil)
        #expect(v[key: "metadata"]?[key: "managedFields"] == nil)
        var kept = JSONReader(
            Array(#"{"metadata": {"annotations": {"x": "y", "endpoints.kubernetes.io/last-change-trigger-time": "t"}}}"#.utf8))
        let k = try #require(try kept.single())
        #expect(k[key: "metadata"]?[key: "annotations"]?[key: "x"] == nil)
        #expect(k[key: "metadata"]?[key: "annotations"]?[key: "endpoints.kubernetes.io/last-change-trigger-time"] != nil)
        #expect(v[key: "metadata"]?[key: "name"] != nil)
        #expect(v[key: "spec"]?[key: "annotations"] != nil)
        // Skipped values are still checked for syntax.
        var bad = JSONReader(Array(#"{"metadata": {"managedFields": [{"f": }]}}"#.utf8))
        #expect(throws: JSONReader.SyntaxError.self) { _ = try bad.single() }
    }

    @Test func anAPIListStreamsItsItemsAndKeepsItsMetadata() throws {
        let item =
            #"{"metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7"}, "spec": {"clusterIP": "198.18.100.1", "ports": [{"port": 80}]}}"#
        for text in [
            #"{"kind": "ServiceList", "apiVersion": "v1", "metadata": {"resourceVersion": "9", "continue": "next"}, "items": [\#(item)]}"#,
            #"{"items": [\#(item)], "metadata": {"resourceVersion": "9", "continue": "next"}}"#
        ] {
            let l = try APIObjects.list(text, kind: "Service", apiVersion: "v1", source: "api")
            #expect(l.resourceVersion == "9" && l.continueToken == "next")
            #expect(l.objects.map(\.key) == ["shop/web"])
            #expect(l.objects.first?.state.services.first?.meta.key == "shop/web")
        }
        #expect(throws: APIObjects.DecodeError.self) {
            _ = try APIObjects.list(#"{"kind": "ServiceList", "items": [\#(item)] "#, kind: "Service", apiVersion: "v1", source: "api")
        }
    }
}

/// Files decoded on several cores and merged in order give what one decoder reading them in
/// order gives.
@Suite struct ParallelDecoding {
    @Test func aFolderDecodedInParallelMatchesOneDecoderInOrder() throws {
        let dir = NSTemporaryDirectory() + "svcnat-parallel-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var inOrder = ManifestDecoder()
        for i in 0..<200 {
            // File 150 (JSON) defines file 20's Service again; file 77 is broken; some are JSON.
            let n = i == 150 ? 20 : i
            let text =
                i == 77
                ? "kind: [unclosed\n"
                : i % 3 == 0
                    ? #"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s\#(n)"}, "spec": {"clusterIP": "198.18.100.\#(n % 250 + 1)", "ports": [{"port": \#(80 + i)}]}}"#
                    : "apiVersion: v1\nkind: Service\nmetadata: {name: s\(n)}\nspec: {clusterIP: 198.18.101.\(n % 250 + 1), ports: [{port: \(80 + i)}]}\n"
            let path = dir + "/f\(String(format: "%03d", i)).\(i % 3 == 0 ? "json" : "yaml")"
            try text.write(toFile: path, atomically: false, encoding: .utf8)
            inOrder.decode(text, file: path)
        }
        do {
            _ = try ManifestSource.load([dir])
            Issue.record("the broken and the duplicate file were taken")
        } catch let e as InputErrors {
            #expect(Set(e.errors.map(\.description)) == Set(inOrder.errors.map(\.description)))
            #expect(
                e.errors.contains {
                    $0.description.contains("f150.json: Service default/s20: metadata.name: defined twice (also in \(dir)/f020.yaml)")
                }, "\(e)")
        }
        var merged = ManifestDecoder()
        let inputs = try (0..<200).filter { $0 != 77 }.map { i in
            let path = dir + "/f\(String(format: "%03d", i)).\(i % 3 == 0 ? "json" : "yaml")"
            return (file: path, text: try String(contentsOfFile: path, encoding: .utf8))
        }
        for outcome in ManifestDecoder.decodeEach(inputs.map { .text(file: $0.file, $0.text) }) {
            guard case .decoded(let d) = outcome else {
                Issue.record("a text at hand was not decoded: \(outcome)")
                continue
            }
            merged.merge(d)
        }
        var serial = ManifestDecoder()
        for input in inputs { serial.decode(input.text, file: input.file) }
        #expect(merged.state == serial.state)
        #expect(merged.state.services.count == 198)
    }
}

/// Input that holds no manifest is told apart from input that holds no Service.
/// A file is read as bytes and checked to be UTF-8 without a String made of it; one that is
/// not is refused by name, JSON or YAML.
@Suite struct FileBytes {
    @Test(arguments: ["bad.json", "bad.yaml"])
    func aFileThatIsNotUTF8IsRefused(name: String) throws {
        let path = NSTemporaryDirectory() + "svcnat-utf8-\(getpid())-" + name
        defer { try? FileManager.default.removeItem(atPath: path) }
        let good =
            #"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"clusterIP": "198.18.100.1", "ports": [{"port": 80}]}}"#
        try Data(Array(good.utf8) + [0x0A, 0xFF, 0xFE]).write(to: URL(fileURLWithPath: path))
        guard case .unreadable(let file, let why) = ManifestDecoder.decodeEach([.file(path)]).first else {
            Issue.record("a file with bytes 0xFF 0xFE was decoded")
            return
        }
        #expect(file == path && why == "is not UTF-8 text")
        try Data(Array(good.utf8)).write(to: URL(fileURLWithPath: path))
        guard case .decoded(let d) = ManifestDecoder.decodeEach([.file(path)]).first else {
            Issue.record("the UTF-8 file was not read")
            return
        }
        #expect(d.state.services.map(\.meta.key) == ["default/a"] && d.errors.isEmpty)
    }
}

@Suite struct EmptyInput {
    @Test func noManifestIsToldApartFromNoServices() throws {
        let dir = NSTemporaryDirectory() + "svcnat-empty-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try !ManifestSource.load([dir]).holdsManifests)
        try "notes\n".write(toFile: dir + "/notes.txt", atomically: true, encoding: .utf8)
        #expect(try !ManifestSource.load([dir]).holdsManifests)
        #expect(try !ManifestSource.load(["-"], stdin: { "" }).holdsManifests)
        #expect(try !ManifestSource.load(["-"], stdin: { " \n  \n" }).holdsManifests)
        // A manifest file with no Service in it is a choice, and counts.
        try "".write(toFile: dir + "/empty.yaml", atomically: true, encoding: .utf8)
        let r = try ManifestSource.load([dir])
        #expect(r.holdsManifests && r.state.services.isEmpty)
        #expect(try ManifestSource.load(["-"], stdin: { "# only a comment\n" }).holdsManifests)
        #expect(
            NothingToApply(paths: ["/srv/m", "-"], servicesNow: 3).description
                == "no manifest in /srv/m, standard input (no *.yaml, *.yml or *.json file, or empty standard input); svcnat's "
                + "tables hold 3 Services now, and applying nothing would remove them all. Give --allow-empty to mean that, or "
                + "use svcnat cleanup to remove svcnat's tables")
        #expect(NothingToApply(paths: ["-"], servicesNow: nil).exitCode == 2)
    }
}
