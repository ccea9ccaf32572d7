using System.Diagnostics;
using System.IO.Compression;
using System.Xml.Linq;
using Microsoft.Extensions.Logging.Abstractions;
using Vmm.Host.Tests.Run;
using Vmm.Virtio.Devices.Blk;
using Vmm.VhostUser.Backend;

namespace Vmm.Host.Tests.Packaging;

/// <summary>
/// What an embedder and an operator get from <c>dotnet pack</c>: the library packages with
/// their metadata, XML docs and symbols in a local feed; samples/EmbeddingSample built from the
/// packages alone (no project reference) and run against a back-end; the <c>vmm</c> tool
/// installed from the feed with <c>dotnet tool install</c>. One test, as it packs once: packing
/// and restoring dominate its time.
/// </summary>
[TestFixture]
[NonParallelizable]
[Category("Packaging")]
public sealed class PackagesTests
{
    private static readonly string[] s_libraries = ["ManagedVmm.Core", "ManagedVmm.Virtio", "ManagedVmm.VhostUser"];
    private static readonly string[] s_projects = ["Vmm.Core", "Vmm.Virtio", "Vmm.VhostUser", "Vmm.Host"];

    private DirectoryInfo _dir = null!;
    private string _version = null!;

    [SetUp]
    public void SetUp()
    {
        _dir = Directory.CreateTempSubdirectory("vmm-pack-");

        // A version of this run alone: NuGet's global cache would otherwise serve an earlier
        // build of the same id and version.
        _version = $"0.1.0-test.{DateTime.UtcNow:yyyyMMddHHmmss}.{Environment.ProcessId}";
    }

    [TearDown]
    public void TearDown()
    {
        _dir.Delete(recursive: true);
        string cache = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        foreach (string id in s_libraries.Append("ManagedVmm.Tool"))
        {
            string cached = Path.Combine(cache, id.ToLowerInvariant(), _version);
            if (Directory.Exists(cached))
            {
                Directory.Delete(cached, recursive: true);
            }
        }
    }

    [Test]
    public async Task Packages_carry_metadata_docs_and_symbols_the_sample_builds_from_them_and_the_tool_installs()
    {
        string feed = Directory.CreateDirectory(Path.Combine(_dir.FullName, "feed")).FullName;
        string artifacts = Path.Combine(_dir.FullName, "artifacts");
        foreach (string project in s_projects)
        {
            // Its own artifacts path: a pack never writes where ./vmm or another test builds.
            await RunAsync("dotnet", "pack", Path.Combine(VmmProcess.RepoRoot, "src", project, project + ".csproj"),
                "--artifacts-path", artifacts, "-o", feed, $"-p:Version={_version}", "-nologo", "-v", "q");
        }

        foreach (string id in s_libraries)
        {
            AssertPackage(feed, id, library: true);
        }

        AssertPackage(feed, "ManagedVmm.Tool", library: false);
        Assert.That(Directory.GetFiles(feed, "*.nupkg"), Has.Length.EqualTo(4), "tests, bench, samples and the TestKit do not pack");

        await BuildAndRunTheSampleAsync(feed);
        await InstallAndRunTheToolAsync(feed);
    }

    private void AssertPackage(string feed, string id, bool library)
    {
        string package = Path.Combine(feed, $"{id}.{_version}.nupkg");
        Assert.That(File.Exists(package), Is.True, package);
        Assert.That(File.Exists(Path.Combine(feed, $"{id}.{_version}.snupkg")), Is.True, $"{id}: symbols package");
        using ZipArchive zip = ZipFile.OpenRead(package);
        using Stream nuspecStream = zip.GetEntry($"{id}.nuspec")!.Open();

        // The nuspec's namespace depends on the features used: match by local name.
        XElement metadata = Child(XDocument.Load(nuspecStream).Root!, "metadata")!;
        string[] entries = [.. zip.Entries.Select(e => e.FullName)];
        Assert.Multiple(() =>
        {
            Assert.That(Child(metadata, "description")?.Value, Does.Contain("ManagedVmm").And.Not.EqualTo("Package Description"), id);
            Assert.That(Child(metadata, "license")?.Value, Is.EqualTo("MIT"), id);
            Assert.That(Child(metadata, "readme")?.Value, Is.EqualTo("README.md"), id);
            Assert.That(Child(metadata, "repository")?.Attribute("type")?.Value, Is.EqualTo("git"), id);
            Assert.That(entries, Does.Contain("README.md").And.Contain("LICENSE"), id);
            if (library)
            {
                string assembly = id.Replace("ManagedVmm.", "Vmm.", StringComparison.Ordinal);
                Assert.That(entries, Does.Contain($"lib/net10.0/{assembly}.dll").And.Contain($"lib/net10.0/{assembly}.xml"), $"{id}: assembly and its XML docs");
            }
            else
            {
                XElement? types = Child(metadata, "packageTypes");
                Assert.That(types is null ? null : Child(types, "packageType")?.Attribute("name")?.Value, Is.EqualTo("DotnetTool"));
                Assert.That(entries, Does.Contain("tools/net10.0/any/vmm.dll").And.Contain("tools/net10.0/any/DotnetToolSettings.xml"));
            }
        });
    }

    private static XElement? Child(XElement parent, string name) => parent.Elements().FirstOrDefault(e => e.Name.LocalName == name);

    /// <summary>samples/EmbeddingSample's own sources in a project outside the repository that references only the packages.</summary>
    private async Task BuildAndRunTheSampleAsync(string feed)
    {
        string consumer = Directory.CreateDirectory(Path.Combine(_dir.FullName, "consumer")).FullName;
        string sample = Path.Combine(VmmProcess.RepoRoot, "samples", "EmbeddingSample");
        File.WriteAllText(Path.Combine(consumer, "nuget.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <add key="managedvmm-local" value="{feed}" />
              </packageSources>
            </configuration>
            """);
        File.WriteAllText(Path.Combine(consumer, "Consumer.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <OutputType>Exe</OutputType>
                <TargetFramework>net10.0</TargetFramework>
                <Nullable>enable</Nullable>
                <ImplicitUsings>enable</ImplicitUsings>
                <TreatWarningsAsErrors>true</TreatWarningsAsErrors>
                <AssemblyName>EmbeddingSample</AssemblyName>
              </PropertyGroup>
              <ItemGroup>
                <Compile Include="{sample}/*.cs" />
                <PackageReference Include="ManagedVmm.VhostUser" Version="{_version}" />
                <PackageReference Include="Akka.Hosting" Version="{CentralVersion("Akka.Hosting")}" />
                <PackageReference Include="Microsoft.Extensions.Hosting" Version="{CentralVersion("Microsoft.Extensions.Hosting")}" />
              </ItemGroup>
            </Project>
            """);
        await RunAsync("dotnet", "build", consumer, "-c", "Release", "-o", Path.Combine(consumer, "out"), "-nologo", "-v", "q");
        Assert.That(File.Exists(Path.Combine(consumer, "out", "Vmm.VhostUser.dll")), Is.True, "the library came from the package");

        string image = Path.Combine(_dir.FullName, "disk.img");
        byte[] bytes = new byte[1 << 20];
        new Random(5).NextBytes(bytes);
        File.WriteAllBytes(image, bytes);
        string socket = Path.Combine(_dir.FullName, "blk.sock");
        using var device = new VirtioBlkDevice(new VirtioBlkOptions(image));
        using VhostUserBackendServer server = VhostUserBackendServer.Bind(device, socket, NullLogger.Instance);
        using var stop = new CancellationTokenSource();
        Task serving = Task.Run(() => server.RunAsync(stop.Token));
        try
        {
            string output = await RunAsync("dotnet", Path.Combine(consumer, "out", "EmbeddingSample.dll"), socket);
            Assert.That(output, Does.Contain($"sector 0: {Convert.ToHexStringLower(bytes, 0, 16)}"));
        }
        finally
        {
            await stop.CancelAsync();
            await serving.WaitAsync(TimeSpan.FromSeconds(30));
        }
    }

    private async Task InstallAndRunTheToolAsync(string feed)
    {
        string tools = Path.Combine(_dir.FullName, "tools");
        await RunAsync("dotnet", "tool", "install", "ManagedVmm.Tool", "--version", _version, "--tool-path", tools, "--add-source", feed);
        string vmm = Path.Combine(tools, "vmm");

        string help = await RunAsync(vmm, "--help");
        Assert.That(help, Does.Contain("run").And.Contain("serve").And.Contain("check-backend"));
        string checkHelp = await RunAsync(vmm, "check-backend", "--help");
        Assert.That(checkHelp, Does.Contain("--type").And.Contain("--allow-writes"));
    }

    /// <summary>The version Directory.Packages.props pins for <paramref name="id"/>, so the consumer uses what the repository does.</summary>
    private static string CentralVersion(string id) =>
        XDocument.Load(Path.Combine(VmmProcess.RepoRoot, "Directory.Packages.props")).Descendants("PackageVersion")
            .Single(e => e.Attribute("Include")?.Value == id).Attribute("Version")!.Value;

    /// <summary>Runs a command to its end (10 minutes at most) and returns its stdout; a non-zero exit fails the test with its output.</summary>
    private async Task<string> RunAsync(string file, params string[] args)
    {
        var start = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            WorkingDirectory = _dir.FullName,
        };
        foreach (string a in args)
        {
            start.ArgumentList.Add(a);
        }

        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        using Process process = Process.Start(start)!;
        process.StandardInput.Close();
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        using var deadline = new CancellationTokenSource(TimeSpan.FromMinutes(10));
        try
        {
            await process.WaitForExitAsync(deadline.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{file} {string.Join(' ', args)} did not finish within 10 minutes");
        }

        string output = await stdout;
        Assert.That(process.ExitCode, Is.Zero, $"{file} {string.Join(' ', args)}:\n{output}\n{await stderr}");
        return output;
    }
}
