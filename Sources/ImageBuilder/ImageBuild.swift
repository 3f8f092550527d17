import Foundation
import HostSystem
import MicroVMCore
import OCIImage
import OCIRegistry

/// Where a built image goes.
public enum ImageDestination: Sendable {
    /// Push to a registry under this reference.
    case registry(ImageReference, RegistryConfig)
    /// Write (or extend) an OCI image layout directory, tagged.
    case layout(directory: String, tag: String)
}

/// What to build.
public enum ImageRecipe: Sendable {
    /// boot/vmlinuz, boot/vmlinux, boot/initrd, boot/config-*, lib/modules/<release>/ from a Debian kernel package.
    case kernel(KernelSource)
    /// lib/modules/<release>/ only (mounted as a volume by guests that need more modules).
    case kernelModules(KernelSource)
    /// The busybox `minimal` root filesystem.
    case minimalRootfs
    /// A root filesystem from Debian packages (the `cloud` and `k8s-node` presets, or `--recipe`).
    case debianRootfs(RootfsRecipe)
    /// One program and what it needs to run (a controller's container image).
    case application(ApplicationImage)
}

/// A Debian kernel package by name (nil: the newest Debian 12 cloud kernel) or a local .deb.
public enum KernelSource: Sendable {
    case package(String?)
    case deb(String)
}

/// The result of a build.
public struct BuiltImage: Sendable {
    public var manifestDigest: String
    public var layerDigest: String
    public var layerSize: Int64
    public var destination: String
}

/// Builds kernel and root filesystem images reproducibly: the same inputs give the same digest
/// (fixed timestamps from `epoch`, sorted entries, fixed ownership: root's, or the packages' own for Debian trees).
public struct ImageBuilder: Sendable {
    public var workDirectory: String
    public var cacheDirectory: String
    public var epoch: SourceDateEpoch
    public var progress: @Sendable (String) -> Void

    public init(workDirectory: String, cacheDirectory: String, epoch: SourceDateEpoch = 1_700_000_000, progress: @escaping @Sendable (String) -> Void = { _ in }) {
        self.workDirectory = workDirectory
        self.cacheDirectory = cacheDirectory
        self.epoch = epoch
        self.progress = progress
    }

    public func build(_ recipe: ImageRecipe, to destination: ImageDestination) async throws -> BuiltImage {
        let stage = "\(workDirectory)/stage"
        try HostFiles.remove(stage)
        try HostFiles.createDirectory(stage)
        var labels = ["org.opencontainers.image.created": epoch.rfc3339]
        switch recipe {
        case .kernel(let source), .kernelModules(let source):
            let kernel = try await fetchKernel(source)
            labels["io.liquidmetal.kernel.release"] = kernel.release
            labels["org.opencontainers.image.title"] = isModules(recipe) ? "kernel modules \(kernel.release)" : "kernel \(kernel.release)"
            try await stageModules(kernel, into: stage)
            if !isModules(recipe) { try await stageKernel(kernel, into: stage) }
        case .minimalRootfs:
            labels["org.opencontainers.image.title"] = "Liquid Metal minimal root filesystem"
            progress("writing the minimal root filesystem")
            try await MinimalRootfs().write(to: stage)
        case .application(let app):
            labels["org.opencontainers.image.title"] = URL(fileURLWithPath: app.path).lastPathComponent
            progress("staging \(app.binary) as \(app.path)")
            let libraries = try await app.write(to: stage)
            if !libraries.isEmpty { progress("the executable is dynamically linked: copied \(libraries.count) libraries (\(libraries.joined(separator: ", ")))") }
        case .debianRootfs(let recipe):
            labels["org.opencontainers.image.title"] = recipe.title
            labels["io.liquidmetal.rootfs.suite"] = recipe.suite
            try await DebianRootfs(recipe: recipe, cacheDirectory: cacheDirectory, workDirectory: workDirectory,
                                   epoch: epoch.seconds, progress: progress).write(to: stage)
        }

        let (layoutDir, tag): (String, String)
        switch destination {
        case .layout(let dir, let t): (layoutDir, tag) = (dir, t)
        case .registry: (layoutDir, tag) = ("\(workDirectory)/layout", "latest")
        }
        if case .registry = destination { try HostFiles.remove(layoutDir) }
        progress("packing the layer (tar + gzip)")
        let writer = try OCILayoutWriter(directory: URL(fileURLWithPath: layoutDir))
        // Trees installed from packages keep their owners and file capabilities; trees the builder writes
        // itself are all root's.
        let metadata: TarWriter.ScannedMetadata
        if case .debianRootfs = recipe { metadata = .ownersAndCapabilities } else { metadata = .none }
        let layer = try writer.addLayer(fromDirectory: URL(fileURLWithPath: stage), epoch: epoch, metadata: metadata)
        var container = ContainerConfig(labels: labels)
        if case .application(let app) = recipe {
            container.entrypoint = [app.path]
            container.cmd = app.arguments.isEmpty ? nil : app.arguments
            container.user = app.user
            container.env = ["PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"]
        }
        let config = ImageConfiguration(config: container, created: epoch.rfc3339, author: "lmctl image build")
        let manifest = try writer.writeImage(layers: [layer], config: config, tag: tag)
        progress("layer \(layer.descriptor.digest) (\(layer.descriptor.size) bytes), manifest \(manifest.digest)")

        var where_ = "oci-layout:\(layoutDir):\(tag)"
        if case .registry(let ref, let registryConfig) = destination {
            let client = RegistryClient(config: registryConfig, logger: .init(label: "lmctl"))
            let pushed: String
            do {
                pushed = try await LayoutPusher(client: client).push(layout: layoutDir, tag: tag, to: ref, progress: progress)
            } catch {
                try? await client.shutdown()
                throw error
            }
            try? await client.shutdown()
            guard pushed == manifest.digest else { throw ImageBuildError("pushed manifest \(pushed) differs from the built one \(manifest.digest)") }
            where_ = "\(ref)"
        }
        return BuiltImage(manifestDigest: manifest.digest, layerDigest: layer.descriptor.digest, layerSize: layer.descriptor.size, destination: where_)
    }

    func isModules(_ r: ImageRecipe) -> Bool {
        if case .kernelModules = r { return true }
        return false
    }

    func fetchKernel(_ source: KernelSource) async throws -> KernelPackage {
        switch source {
        case .deb(let path):
            progress("unpacking \(path)")
            return try await KernelPackage.unpack(deb: path, workDirectory: workDirectory)
        case .package(let name):
            var package = name ?? ""
            if package.isEmpty { package = try await KernelPackage.newestCloudKernel() }
            progress("fetching \(package) with apt")
            return try await KernelPackage.fetch(package: package, cacheDirectory: cacheDirectory, workDirectory: workDirectory)
        }
    }

    /// lib/modules/<release>/ without the build/source links into /usr/src.
    func stageModules(_ k: KernelPackage, into stage: String) async throws {
        try HostFiles.createDirectory("\(stage)/lib/modules")
        try await HostProcess.run(["cp", "-a", k.modulesDirectory, "\(stage)/lib/modules/"])
        for link in ["build", "source"] { try HostFiles.remove("\(stage)/lib/modules/\(k.release)/\(link)") }
    }

    func stageKernel(_ k: KernelPackage, into stage: String) async throws {
        try HostFiles.createDirectory("\(stage)/boot")
        try FileManager.default.copyItem(atPath: k.vmlinuz, toPath: "\(stage)/boot/vmlinuz")
        try FileManager.default.copyItem(atPath: k.config, toPath: "\(stage)/boot/config-\(k.release)")
        progress("extracting boot/vmlinux from the bzImage")
        try await VmlinuxExtractor.extract(bzImage: k.vmlinuz, to: "\(stage)/boot/vmlinux")
        progress("building boot/initrd")
        let cpio = try InitrdBuilder(kernel: k, mtime: Int(epoch.seconds)).archive().encoded()
        let sink = try FileSink(creatingFileAt: "\(stage)/boot/initrd")
        let gzip = try GzipWriter(sink: sink, level: 9)
        try cpio.withUnsafeBytes { try gzip.write($0) }
        _ = try gzip.finish()
        try sink.close()
    }
}
