import Foundation
import Testing

extension RootTests.DaemonTests {
    /// Sends one request with `method` and prints the status line's code.
    func status(_ bed: Testbed, _ ns: String, _ method: String, _ url: String) throws -> Int {
        let script = """
            import sys, urllib.request, urllib.error
            r = urllib.request.Request(sys.argv[2], method=sys.argv[1])
            try:
                print(urllib.request.urlopen(r, timeout=2).status)
            except urllib.error.HTTPError as e:
                print(e.code, e.headers.get("Allow"))
            """
        let out = try bed.sh(ns, ["python3", "-c", script, method, url]).trimmingCharacters(in: .whitespacesAndNewlines)
        return Int(out.split(separator: " ").first ?? "") ?? 0
    }

    /// Every method answered 200. Now GET and HEAD only; the rest get 405.
    @Test func onlyGetAndHeadAreAnswered() throws {
        let bed = Testbed("meth")
        defer { bed.close() }
        let (n, _, _) = try webDaemon(bed, pods: [1])
        for url in ["http://127.0.0.1:10256/healthz", "http://127.0.0.1:10249/metrics"] {
            #expect(try status(bed, n, "GET", url) == 200)
            #expect(try status(bed, n, "HEAD", url) == 200)
            for m in ["POST", "PUT", "DELETE", "PATCH"] { #expect(try status(bed, n, m, url) == 405, "\(m) \(url)") }
        }
    }

    /// 1,100 slowloris connections under 1,024 open files stopped /healthz, /livez and
    /// /metrics, and made a new manifest "not UTF-8". Now a listener holds at most 16
    /// connections from one address (256 in all) and closes one that sends no whole request
    /// in 10 s. The slow client is another host; the node's own checks keep answering.
    @Test func slowClientsNeitherStopHealthNorStarveManifestReads() throws {
        let bed = Testbed("slow")
        defer { bed.close() }
        try bed.topology(pods: 0)
        let n = bed.ns("node"), client = bed.ns("client")
        let dir = try bed.makeDirectory()
        try write(dir + "/web.yaml", serviceManifest(name: "web", pods: [1]))
        let daemon = try bed.startProcess(
            n, ["prlimit", "--nofile=1024:1024", svcnatPath, "run", "--manifests", dir, "--min-sync-period", "100ms"])
        #expect(within(5) { ruleset(bed, n).contains("198.19.1.2") } != nil, "\(daemon.log())")
        let loris = try bed.startProcess(client, ["python3", helper("slowloris.py"), "198.18.0.1", "10256", "1100", "12"])
        #expect(within(25) { loris.log().contains("holding") } != nil, "\(loris.log())")
        // While they hang: health answers, and a new file is read and programmed.
        #expect(try http(bed, n, "http://127.0.0.1:10256/livez").0 == 200)
        #expect(try http(bed, n, "http://127.0.0.1:10256/healthz").0 == 200)
        #expect(try http(bed, n, "http://127.0.0.1:10249/metrics").0 == 200)
        try write(dir + "/api.yaml", serviceManifest(name: "api", ip: "198.18.100.21", pods: [2]))
        #expect(within(5) { ruleset(bed, n).contains("198.19.2.2") } != nil, "\(daemon.log())")
        #expect(!daemon.log().contains("not UTF-8") && !daemon.log().contains("cannot be read"), "\(daemon.log())")
        _ = loris.waitExit(seconds: 30)
        let result = try JSONSerialization.jsonObject(with: Data((loris.log().split(separator: "\n").last ?? "").utf8)) as? [String: Int]
        // The ones the server held were closed at the request deadline, the rest at once.
        #expect((result?["closedByServer"] ?? 0) == (result?["connected"] ?? -1), "\(String(describing: result))")
        #expect((result?["connected"] ?? 0) > 16, "\(String(describing: result))")
    }

    /// /healthz, on 0.0.0.0 by default, showed file paths and the offending YAML line (which
    /// can hold a secret) to the network. Now another host learns what failed and counts; the
    /// details go to the node itself and the log.
    @Test func healthFromAnotherHostShowsNoFileContents() throws {
        let bed = Testbed("hzext")
        defer { bed.close() }
        try bed.topology(pods: 0)
        let n = bed.ns("node"), client = bed.ns("client")
        let dir = try bed.makeDirectory()
        try write(dir + "/web.yaml", serviceManifest(name: "web", pods: [1]))
        try write(
            dir + "/secret.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIP: s3cr3t-t0ken, ports: [{port: 80}]}\n")
        let daemon = try bed.startDaemon(n, ["--manifests", dir, "--min-sync-period", "100ms"])
        #expect(within(5) { ruleset(bed, n).contains("198.19.1.2") } != nil, "\(daemon.log())")
        let local = try http(bed, n, "http://127.0.0.1:10256/healthz").1
        #expect(local.contains("s3cr3t-t0ken") && local.contains("secret.yaml"), "\(local)")
        let remote = try http(bed, client, "http://198.18.0.1:10256/healthz").1
        #expect(!remote.contains("s3cr3t") && !remote.contains("secret.yaml") && !remote.contains(dir), "\(remote)")
        #expect(remote.contains("\"rejectedFiles\": 1"), "\(remote)")
        #expect(daemon.log().contains("s3cr3t-t0ken"), "the details are in the log")
    }
}
