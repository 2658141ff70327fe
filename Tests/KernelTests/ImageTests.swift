import Foundation
import Testing

/// The OCI image `scripts/image` writes (.build/image/svcnat.oci.tar). `.ci/run` builds it
/// first and sets SVCNAT_REQUIRE_IMAGE=1, so there a missing image fails; elsewhere the suite
/// is skipped until `scripts/image` has run.
let imagePath: String = {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent(".build/image/svcnat.oci.tar").path
}()
let imageRequired = ProcessInfo.processInfo.environment["SVCNAT_REQUIRE_IMAGE"] == "1"
let imageExists = FileManager.default.fileExists(atPath: imagePath)

extension RootTests {
    @Suite(.serialized, .enabled(if: imageExists || imageRequired, "no image: run scripts/image first"))
    struct ImageTests {
        /// The archive, unpacked: its layout's files and the layer's root filesystem.
        final class Unpacked {
            let dir: String
            var root: String { dir + "/root" }
            init() throws {
                dir = NSTemporaryDirectory() + "svcnat-test-image-\(getpid())-\(Int.random(in: 0..<10000))"
                try FileManager.default.createDirectory(atPath: dir + "/root", withIntermediateDirectories: true)
                let r = try run(["tar", "-xf", imagePath, "-C", dir])
                guard r.code == 0 else { throw TestbedError("tar -xf \(imagePath): \(r.err)") }
            }
            func json(_ path: String) throws -> [String: Any] {
                try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/" + path))) as! [String: Any]
            }
            func blob(_ digest: String) -> String { "blobs/sha256/" + digest.dropFirst("sha256:".count) }
            deinit { try? FileManager.default.removeItem(atPath: dir) }
        }

        /// Runs the image's svcnat as a container runtime would, by chroot into its root with
        /// its own /proc, in a new mount and PID namespace (and the network namespace given, or
        /// a new empty one).
        func inImage(_ root: String, _ args: [String], netns: String? = nil) throws -> CommandResult {
            let inner = "mount -t proc proc \(root)/proc && exec chroot \(root) /usr/local/bin/svcnat " + args.joined(separator: " ")
            let unshare = ["unshare", "--mount", "--pid", "--fork"] + (netns == nil ? ["--net"] : []) + ["sh", "-c", inner]
            return try run((netns.map { ["ip", "netns", "exec", $0] } ?? []) + unshare)
        }

        @Test func layoutIsWhatOCIToolsRead() throws {
            #expect(imageExists, "\(imagePath) is missing: scripts/image writes it")
            let image = try Unpacked()
            let layout = try image.json("oci-layout")
            #expect(layout["imageLayoutVersion"] as? String == "1.0.0")
            let index = try image.json("index.json")
            let entry = try #require((index["manifests"] as? [[String: Any]])?.first)
            let manifestDigest = try #require(entry["digest"] as? String)
            let manifest = try image.json(image.blob(manifestDigest))
            let config = try #require(manifest["config"] as? [String: Any])
            let layers = try #require(manifest["layers"] as? [[String: Any]])
            // Every blob is what its name says, by sha256sum, and as long as its descriptor says.
            for d in [entry, config] + layers {
                let digest = try #require(d["digest"] as? String)
                let path = image.dir + "/" + image.blob(digest)
                let sum = try run(["sha256sum", path]).out.split(separator: " ").first.map(String.init)
                #expect("sha256:" + (sum ?? "") == digest)
                let size = (try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? -1
                #expect(size == d["size"] as? Int, "\(digest)")
            }
            let cfg = try image.json(image.blob(try #require(config["digest"] as? String)))
            let entrypoint = (cfg["config"] as? [String: Any])?["Entrypoint"] as? [String]
            #expect(entrypoint == ["/usr/local/bin/svcnat"], "\(cfg)")
            // docker load's manifest.json names the same config and layer.
            let docker =
                try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: image.dir + "/manifest.json")))
                as? [[String: Any]]
            #expect(docker?.first?["Config"] as? String == image.blob(try #require(config["digest"] as? String)))
            // skopeo reads the archive and checks every digest as it copies.
            let skopeo = ["/usr/bin/skopeo", "/usr/sbin/skopeo"].first { FileManager.default.isExecutableFile(atPath: $0) }
            #expect(skopeo != nil || !imageRequired, "skopeo is not installed (.ci/run installs it)")
            if let skopeo {
                let copy = try run([skopeo, "copy", "oci-archive:\(imagePath)", "dir:\(image.dir)/skopeo-copy"])
                #expect(copy.code == 0, "\(copy.err)")
            }
        }

        @Test func runsWithoutTheSwiftToolchain() throws {
            let image = try Unpacked()
            let manifest = try image.json(
                image.blob(try #require((try image.json("index.json")["manifests"] as? [[String: Any]])?.first?["digest"] as? String)))
            let layer = try #require((manifest["layers"] as? [[String: Any]])?.first?["digest"] as? String)
            let untar = try run(["tar", "-xzf", image.dir + "/" + image.blob(layer), "-C", image.root])
            #expect(untar.code == 0, "\(untar.err)")
            // The binary loads no Swift runtime library, and the image holds none.
            let ldd = try run(["ldd", image.root + "/usr/local/bin/svcnat"])
            #expect(ldd.code == 0 && ldd.out.contains("libnftnl.so") && ldd.out.contains("libmnl.so"), "\(ldd.out)")
            #expect(!ldd.out.lowercased().contains("swift") && !ldd.out.contains("libFoundation") && !ldd.out.contains("icu"), "\(ldd.out)")
            let found = try run(["find", image.root, "-name", "*swift*"])
            #expect(found.out.isEmpty, "\(found.out)")
            let copy = try run(["cp", "-r", examples, image.root + "/examples"])
            #expect(copy.code == 0)

            // The dry run of the example, in an empty network namespace.
            let dry = try inImage(image.root, ["apply", "--dry-run", "-f", "/examples", "--cluster-cidr", "198.19.0.0/16"])
            #expect(dry.code == 0 && dry.out.contains("table ip svcnat") && dry.out.contains("198.18.100.10"), "\(dry.err)")

            // apply programs a test namespace; nft reads the rules back.
            let bed = Testbed("image")
            defer { bed.close() }
            let node = try bed.addNamespace("node")
            let applied = try inImage(image.root, ["apply", "-f", "/examples", "--cluster-cidr", "198.19.0.0/16"], netns: node)
            #expect(applied.code == 0, "\(applied.err)")
            let listed = try bed.sh(node, ["nft", "-j", "list", "table", "ip", "svcnat"])
            #expect(listed.contains("\"dnat\"") && listed.contains("198.18.100.10"), "\(listed.prefix(2000))")
            // The same rules as the toolchain's build plans: nothing to change.
            let diff = try bed.svcnat(node, ["diff", "-f", examples, "--cluster-cidr", "198.19.0.0/16"])
            #expect(diff.code == 0, "\(diff.out)\(diff.err)")
        }
    }
}
