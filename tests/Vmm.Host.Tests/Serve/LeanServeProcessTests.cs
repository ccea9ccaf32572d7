using System.Diagnostics;
using System.Security.Cryptography;
using Vmm.Host.Tests.Run;

namespace Vmm.Host.Tests.Serve;

/// <summary>
/// Which program <c>./vmm serve</c> runs (docs/cli.md, "The lean serve binary"): the native
/// vmm-serve when clang is installed (./test installs it), the managed one with
/// VMM_SERVE_MANAGED=1; neither loads Akka, and both serve a real front-end.
/// </summary>
[TestFixture]
[NonParallelizable]
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class LeanServeProcessTests
{
    private static readonly Dictionary<string, string> Managed = new() { ["VMM_SERVE_MANAGED"] = "1" };

    private DirectoryInfo _dir = null!;

    private static string NativeBinary => Path.Combine(VmmProcess.RepoRoot, "src", "Vmm.Host.Serve", "bin", "aot", "native", "vmm-serve");

    [OneTimeSetUp]
    public void BuildOnce()
    {
        Assert.That(OnPath("clang"), Is.True, "clang is not installed (apt-get install clang zlib1g-dev; ./test installs them)");
        ServeProcess.EnsureBuilt();
    }

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("vmm-lean-");

    [TearDown]
    public void TearDown() => _dir.Delete(recursive: true);

    [Test]
    public void With_clang_installed_vmm_serve_runs_the_native_binary_and_serves_without_Akka()
    {
        (string exe, string maps) = ServeAndChecksum(environment: null);

        Assert.That(exe, Is.EqualTo(NativeBinary));
        Assert.That(maps, Does.Not.Contain("Akka"));
        Assert.That(maps, Does.Not.Contain("libcoreclr"), "a native binary runs without the CLR");
    }

    [Test]
    public void The_native_binary_holds_no_Akka_code()
    {
        // The native compiler's symbol file names every method it compiled in, as
        // Assembly_Namespace_Type__Method: the back-end server is there, nothing of Akka's or the
        // generic host's may be.
        string symbols = NativeBinary + ".dbg";
        Assert.That(File.Exists(symbols), Is.True, "VMM_BUILD_ONLY=1 ./vmm did not build the native serve binary");
        byte[] compiled = File.ReadAllBytes(symbols);

        Assert.That(compiled.AsSpan().IndexOf("Vmm_VhostUser_Vmm_VhostUser_Backend_VhostUserBackendServer"u8), Is.GreaterThanOrEqualTo(0));
        Assert.That(compiled.AsSpan().IndexOf("Akka"u8), Is.EqualTo(-1));
        Assert.That(compiled.AsSpan().IndexOf("Microsoft_Extensions_Hosting"u8), Is.EqualTo(-1));
        Assert.That(compiled.AsSpan().IndexOf("Microsoft_Extensions_DependencyInjection"u8), Is.EqualTo(-1));
    }

    [Test]
    public void VMM_SERVE_MANAGED_serves_in_the_dotnet_runtime_without_Akka()
    {
        (string exe, string maps) = ServeAndChecksum(Managed);

        Assert.That(Path.GetFileName(exe), Is.EqualTo("dotnet"));
        Assert.That(maps, Does.Contain("vmm.dll"));
        Assert.That(maps, Does.Not.Contain("Akka"));
    }

    /// <summary>
    /// Starts <c>./vmm serve blk</c> on a random image, reads the server's /proc entries, then has
    /// <c>./vmm run --workload checksum</c> read the whole disk through it.
    /// </summary>
    private (string Exe, string Maps) ServeAndChecksum(IReadOnlyDictionary<string, string>? environment)
    {
        string image = Path.Combine(_dir.FullName, "disk.img");
        byte[] content = new byte[1 << 20];
        new Random(13).NextBytes(content);
        File.WriteAllBytes(image, content);
        string socket = Path.Combine(_dir.FullName, "blk.sock");

        using Process server = ServeProcess.Start(socket, image, null, environment);
        string exe = File.ResolveLinkTarget($"/proc/{server.Id}/exe", returnFinalTarget: false)!.FullName;
        string maps = File.ReadAllText($"/proc/{server.Id}/maps");

        VmmProcess.Result run = VmmProcess.Run("run", "--vhost-user", $"{socket},type=blk", "--workload", "checksum");
        Assert.That(run.ExitCode, Is.Zero, run.Stderr);
        Assert.That(run.Stdout, Does.Contain(Convert.ToHexStringLower(SHA256.HashData(content))));
        Assert.That(ServeProcess.Stop(server), Is.Zero);
        return (exe, maps);
    }

    private static bool OnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':').Any(dir => File.Exists(Path.Combine(dir, name)));
}
