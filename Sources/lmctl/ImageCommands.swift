import ArgumentParser
import Foundation
import ImageBuilder
import MicroVMCore
import OCIImage
import OCIRegistry

struct ImageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Build microVM kernel and root filesystem images as OCI images, and push OCI layouts.",
        subcommands: [ImageBuild.self, ImagePush.self])
}

struct ImageBuild: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Build an image reproducibly (same inputs, same digest) and push it or write an OCI layout.",
        subcommands: [BuildKernel.self, BuildKernelModules.self, BuildRootfs.self, BuildApp.self])
}

/// Options every build shares: where the image goes and how.
struct BuildOutputOptions: ParsableArguments {
    @Option(help: "Image reference, e.g. 127.0.0.1:5111/lm/kernel:6.1 (its tag also names the layout entry).")
    var tag: String?
    @Flag(help: "Push to the registry named in --tag.")
    var push = false
    @Option(help: "Write an OCI image layout instead: oci-layout:DIR.")
    var output: String?
    @OptionGroup var registry: RegistryOptions
    @Option(name: .customLong("work-dir"), help: "Scratch directory. (default: a new directory under /var/tmp)")
    var workDir: String?
    @Option(name: .customLong("cache-dir"), help: "Downloaded packages are kept here.")
    var cacheDir = "/var/cache/liquidmetal"
    @Option(name: .customLong("source-date-epoch"), help: "Timestamp of every file and of the image, in seconds. (default: $SOURCE_DATE_EPOCH or 1700000000)")
    var sourceDateEpoch: Int64?

    /// Checks that the image has a name and one destination (each build command's `validate()`;
    /// not the group's own, so that `rootfs --print-recipe` needs neither).
    func validateDestination() throws {
        guard let tag else { throw ValidationError("--tag is required: the image reference, e.g. 127.0.0.1:5111/lm/kernel:6.1") }
        guard push != (output != nil) else { throw ValidationError("give exactly one of --push and --output oci-layout:DIR") }
        if let output, !output.hasPrefix("oci-layout:") { throw ValidationError("--output must look like oci-layout:DIR") }
        do { _ = try ImageReference(parsing: tag) } catch { throw ValidationError("--tag: \(error.message)") }
    }

    func run(_ recipe: ImageRecipe) async throws {
        let ref = try ImageReference(parsing: tag ?? "")
        let destination: ImageDestination
        if let output {
            destination = .layout(directory: String(output.dropFirst("oci-layout:".count)), tag: ref.tag ?? "latest")
        } else {
            destination = .registry(ref, try registry.config())
        }
        let epoch = SourceDateEpoch(seconds: sourceDateEpoch ?? SourceDateEpoch(environmentValue: ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"])?.seconds ?? 1_700_000_000)
        let work = workDir ?? "/var/tmp/lmctl-build-\(getpid())"
        defer { if workDir == nil { try? FileManager.default.removeItem(atPath: work) } }
        let start = Date()
        let builder = ImageBuilder(workDirectory: work, cacheDirectory: cacheDir, epoch: epoch) { line in
            FileHandle.standardError.write(Data("lmctl: \(line)\n".utf8))
        }
        do {
            let built = try await builder.build(recipe, to: destination)
            print("\(built.destination)@\(built.manifestDigest)")
            FileHandle.standardError.write(Data(String(format: "lmctl: built in %.1f s; layer %.1f MiB compressed\n", Date().timeIntervalSince(start), Double(built.layerSize) / 1_048_576).utf8))
        } catch let e as ImageBuildError {
            throw CommandFailed(description: e.description)
        } catch let e as RegistryError {
            throw CommandFailed(description: e.message)
        }
    }
}

/// How registries are reached: plain HTTP or TLS, and with which credentials.
struct RegistryOptions: ParsableArguments {
    @Option(name: .customLong("insecure-registry"), help: "Registry host:port reached over plain HTTP (repeatable); loopback registries always are.")
    var insecureRegistries: [String] = []
    @Option(name: .customLong("registry-auth-file"), help: "Docker-style config.json with registry credentials.")
    var registryAuthFile: String?

    func config() throws -> RegistryConfig {
        var config = RegistryConfig(plainHTTP: Set(insecureRegistries))
        if let f = registryAuthFile {
            do { config.credentials = try RegistryConfig.loadCredentials(dockerConfigAt: f) } catch let e as AgentError {
                throw CommandFailed(description: e.message)
            }
        }
        return config
    }
}

/// `lmctl image push oci-layout:DIR[:TAG] REF`: copies one image of a layout to a registry.
struct ImagePush: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "push",
        abstract: "Push an image from an OCI image layout (as `image build --output` writes) to a registry.",
        discussion: """
            Blobs the registry already has are not sent again. Prints REF@DIGEST when done.
            Example: lmctl image push oci-layout:/tmp/kernel:latest 127.0.0.1:5111/lm/kernel:6.1
            """)
    @Argument(help: "oci-layout:DIR[:TAG] (TAG defaults to latest).") var source: String
    @Argument(help: "Image reference to push to, e.g. registry.example:5000/lm/kernel:6.1.") var destination: String
    @OptionGroup var registry: RegistryOptions

    func validate() throws {
        guard source.hasPrefix("oci-layout:"), source.count > "oci-layout:".count else { throw ValidationError("the source must look like oci-layout:DIR[:TAG]") }
        do { _ = try ImageReference(parsing: destination) } catch { throw ValidationError("destination: \(error.message)") }
    }

    func run() async throws {
        var layout = String(source.dropFirst("oci-layout:".count)), tag = "latest"
        if let colon = layout.lastIndex(of: ":"), !layout[layout.index(after: colon)...].contains("/") {
            tag = String(layout[layout.index(after: colon)...])
            layout = String(layout[..<colon])
        }
        let ref = try ImageReference(parsing: destination)
        let client = RegistryClient(config: try registry.config(), logger: .init(label: "lmctl"))
        do {
            let digest = try await LayoutPusher(client: client).push(layout: layout, tag: tag, to: ref) { line in
                FileHandle.standardError.write(Data("lmctl: \(line)\n".utf8))
            }
            try? await client.shutdown()
            print("\(ref)@\(digest)")
        } catch {
            try? await client.shutdown()
            switch error {
            case let e as ImageBuildError: throw CommandFailed(description: e.description)
            case let e as RegistryError: throw CommandFailed(description: e.message)
            default: throw error
            }
        }
    }
}

struct KernelOptions: ParsableArguments {
    @Option(help: "Debian kernel package. (default: the newest Debian 12 cloud kernel, linux-image-cloud-amd64's dependency)")
    var package: String?
    @Option(help: "A local kernel .deb instead of downloading one.")
    var deb: String?
    var source: KernelSource { deb.map { .deb($0) } ?? .package(package) }
}

struct BuildKernel: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernel",
        abstract: "A kernel image: boot/vmlinuz (QEMU), boot/vmlinux (Firecracker, Cloud Hypervisor), boot/initrd, lib/modules/<release>/.",
        discussion: "The initrd loads virtio, ext4, vfat and iso9660 modules, mounts /dev/vda (or lm_root=DEV) and switches to its /sbin/init.")
    @OptionGroup var kernel: KernelOptions
    @OptionGroup var output: BuildOutputOptions
    func validate() throws { try output.validateDestination() }
    func run() async throws { try await output.run(.kernel(kernel.source)) }
}

struct BuildKernelModules: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "kernel-modules", abstract: "A modules-only image: lib/modules/<release>/.")
    @OptionGroup var kernel: KernelOptions
    @OptionGroup var output: BuildOutputOptions
    func validate() throws { try output.validateDestination() }
    func run() async throws { try await output.run(.kernelModules(kernel.source)) }
}

struct BuildApp: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "app",
        abstract: "An image that runs one program, e.g. the capmvm controller: the executable as entrypoint, run as an unprivileged user.",
        discussion: """
            Holds the executable, the shared libraries ldd lists for it (none for a static binary), the host's CA bundle \
            and /etc/passwd with user 65532. Example:
              swift build -c release --product capmvm --static-swift-stdlib
              lmctl image build app --binary .build/release/capmvm --tag registry.example.com/lm/capmvm:v0.1.0 --push
            """)
    @Option(help: "The executable to package.") var binary: String
    @Option(help: "Its path in the image (the entrypoint). (default: /<file name>)") var path: String?
    @Option(help: "uid:gid it runs as.") var user = "65532:65532"
    @Option(name: .customLong("arg"), help: "An argument after the entrypoint (repeatable).") var arguments: [String] = []
    @OptionGroup var output: BuildOutputOptions
    func validate() throws {
        guard user.wholeMatch(of: /[0-9]+(:[0-9]+)?/) != nil else { throw ValidationError("--user \"\(user)\" must be UID or UID:GID (numbers)") }
        try output.validateDestination()
    }
    func run() async throws { try await output.run(.application(ApplicationImage(binary: binary, path: path, user: user, arguments: arguments))) }
}

struct BuildRootfs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rootfs",
        abstract: "A root filesystem image, from a preset or a recipe.",
        discussion: """
            Presets:
              minimal   busybox; an /sbin/init that prints LIQUIDMETAL-GUEST-READY and configures eth0 from
                        lm_ip=ADDR/PREFIX lm_gw=GW on the kernel command line. Needs busybox-static.
              cloud     Debian 12 with systemd, cloud-init (NoCloud seed disk, else no datasource), openssh
                        (host keys made on first boot) and ifupdown networking.
              k8s-node  cloud plus containerd (Debian) and kubelet, kubeadm, kubectl from --package-source.
            --recipe FILE.yaml describes a Debian root filesystem: suite, mirror, variant, hostname, packages,
            sources, files, users and services (see docs/image-builder.md).
            Debian trees are built with mmdebstrap (needs root); downloaded packages are kept under
            --cache-dir/debs and reused. The Debian archive is the host's apt sources for the suite unless
            --mirror or the recipe names one.
            """)
    @Option(help: "minimal, cloud or k8s-node.") var preset: String?
    @Option(help: "A recipe file (YAML) instead of a preset.") var recipe: String?
    @Option(name: .customLong("package-source"), help: "An extra apt source, one line: 'deb [options] URI SUITE [COMPONENT...]' (k8s-node: where kubelet, kubeadm and kubectl come from).")
    var packageSource: String?
    @Option(name: .customLong("package-source-key"), help: "The key that signs --package-source (.asc or .gpg).")
    var packageSourceKey: String?
    @Option(help: "Debian archive URL for cloud and k8s-node; it also replaces a recipe's own mirror. (default: the recipe's mirror, else the host's Debian apt sources)")
    var mirror: String?
    @Option(name: .customLong("preload-image"), help: ArgumentHelp(
        "NAME=DIR[:TAG]: a container image the image's containerd holds from first boot, copied from an OCI layout (repeatable).",
        discussion: "For nodes that pull nothing (air-gapped): e.g. registry.k8s.io/pause:3.10.2=./pause-layout. Needs containerd in the image (k8s-node has it); imported into the k8s.io namespace by lm-preload-images.service before the kubelet starts.",
        valueName: "NAME=DIR[:TAG]"))
    var preloadImages: [String] = []
    @Flag(name: .customLong("print-recipe"), help: "Print the recipe the preset or file amounts to, then exit (no --tag or destination needed).")
    var printRecipe = false
    @OptionGroup var output: BuildOutputOptions

    func validate() throws {
        if preset != nil && recipe != nil { throw ValidationError("give --preset or --recipe, not both") }
        if let preset, !["minimal", "cloud", "k8s-node"].contains(preset) { throw ValidationError("--preset must be minimal, cloud or k8s-node") }
        if packageSourceKey != nil && packageSource == nil { throw ValidationError("--package-source-key needs --package-source") }
        if !printRecipe { try output.validateDestination() }
    }

    func run() async throws {
        // The key's path made absolute, so that a printed recipe still names it when read back from elsewhere.
        let key = packageSourceKey.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
        let source = packageSource.map { RootfsRecipe.PackageSource(line: $0, key: key) }
        var r: RootfsRecipe
        do {
            switch (preset ?? (recipe == nil ? "minimal" : nil), recipe) {
            case ("minimal"?, _):
                guard source == nil, mirror == nil, preloadImages.isEmpty else { throw ValidationError("--package-source, --mirror and --preload-image are for Debian root filesystems, not minimal") }
                if printRecipe { print("minimal: busybox (not a Debian recipe)"); return }
                try await output.run(.minimalRootfs)
                return
            case ("cloud"?, _): r = RootfsPresets.cloud()
            case ("k8s-node"?, _):
                guard let source else { throw CommandFailed(description: RootfsPresets.k8sSourceHelp) }
                r = RootfsPresets.k8sNode(source: source)
            case (_, let file?): r = try RootfsRecipe.load(path: file)
            default: throw ValidationError("give --preset or --recipe")
            }
            if preset != "k8s-node", let source { r.sources.append(source) }
            if let mirror { r.mirror = mirror }
            for flag in preloadImages { r.images.append(try PreloadedImages.parse(flag: flag)) }
            do { try r.validate() } catch let e as ImageBuildError where recipe != nil {
                throw ImageBuildError("\(recipe ?? ""): \(e.description)")  // name the file, as parse errors do
            }
        } catch let e as ImageBuildError {
            throw CommandFailed(description: e.description)
        }
        if printRecipe { print(r.yaml()); return }
        try await output.run(.debianRootfs(r))
    }
}
