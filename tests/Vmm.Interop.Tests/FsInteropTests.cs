using Vmm.Interop.Tests.Harness;

namespace Vmm.Interop.Tests;

/// <summary>
/// Our virtio-fs guest driver through our front-end (<c>vmm run --vhost-user S,type=fs</c>)
/// against both real virtiofsds. Each virtiofsd serves one connection: one per run.
/// </summary>
public sealed class FsInteropTests : InteropTest
{
    [TestCase(VirtiofsdKind.C)]
    [TestCase(VirtiofsdKind.Rust)]
    public async Task Fs_workload_prints_what_sha256sum_prints_for_the_shared_directory(VirtiofsdKind kind)
    {
        var shared = SharedTree.Create(PathIn("shared"));
        var expected = await SharedTree.Sha256SumAsync(shared);
        var backend = await StartVirtiofsdAsync(kind, shared, PathIn("fs.sock"), tag: "interop");

        // tag=local is what the VMM serves while the back-end has no config of its own (the C
        // virtiofsd); the Rust one, started with --tag, serves its own and is answered from.
        var r = await VmmRun.RunAsync("run", "--vhost-user", $"{backend.Socket},type=fs,tag=local", "--workload", "fs");

        Assert.That(r.ExitCode, Is.Zero, r.Stderr + "\n" + backend.Describe());
        Assert.That(r.Stdout, Is.EqualTo(expected));
        Assert.That(expected.Split('\n', StringSplitOptions.RemoveEmptyEntries), Has.Length.EqualTo(10), "the tree's ten regular files");
        Assert.That(r.Stderr, Does.Contain("10 files"));
        Assert.That(r.Stderr, Does.Contain(kind == VirtiofsdKind.Rust ? "fs: tag 'interop'" : "fs: tag 'local'"), "the tag in the device config");
    }

    [TestCase(VirtiofsdKind.C)]
    [TestCase(VirtiofsdKind.Rust)]
    public async Task Fs_verify_writes_reads_back_renames_removes_and_leaves_the_directory_as_it_was(VirtiofsdKind kind)
    {
        var shared = SharedTree.Create(PathIn("shared"));
        var before = SharedTree.Snapshot(shared);
        var backend = await StartVirtiofsdAsync(kind, shared, PathIn("fs.sock"));

        var r = await VmmRun.RunAsync("run", "--vhost-user", $"{backend.Socket},type=fs", "--workload", "fs-verify");

        Assert.That(r.ExitCode, Is.Zero, r.Stderr + "\n" + backend.Describe());
        Assert.That(r.Stdout, Is.EqualTo("fs-verify: equal\n"));
        // Requests beyond max_write (1 MiB for both) were split.
        Assert.That(r.Stderr, Does.Contain("requests of 1, 4095, 4096, 65539, 1048576, 2109497 bytes (max_write 1048576)"));
        Assert.That(SharedTree.Snapshot(shared), Is.EqualTo(before));
    }

    [Test]
    public async Task Fs_bench_reads_a_file_and_leaves_nothing_behind()
    {
        var shared = Directory.CreateDirectory(PathIn("shared")).FullName;
        var backend = await StartVirtiofsdAsync(VirtiofsdKind.C, shared, PathIn("fs.sock"));

        var r = await VmmRun.RunAsync("run", "--vhost-user", $"{backend.Socket},type=fs", "--workload", "bench", "--seconds", "1", "--iodepth", "4", "--json");

        Assert.That(r.ExitCode, Is.Zero, r.Stderr + "\n" + backend.Describe());
        Assert.That(r.Stdout, Does.Contain("\"device\":\"fs\"").And.Contain("\"errors\":0").And.Contain("\"iodepth\":4"));
        Assert.That(Directory.EnumerateFileSystemEntries(shared), Is.Empty);
    }
}
