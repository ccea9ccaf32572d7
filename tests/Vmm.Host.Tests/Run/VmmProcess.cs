using System.Diagnostics;
using NUnit.Framework;

namespace Vmm.Host.Tests.Run;

/// <summary>Runs the real <c>./vmm</c> launcher of this checkout as a process.</summary>
internal static class VmmProcess
{
    private static readonly Lazy<string> Root = new(() =>
    {
        for (DirectoryInfo? dir = new(TestContext.CurrentContext.TestDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "ManagedVmm.sln")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException("ManagedVmm.sln not found above the test directory.");
    });

    public static string RepoRoot => Root.Value;

    public sealed record Result(int ExitCode, string Stdout, string Stderr)
    {
        public string[] StderrLines => Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
    }

    public static Result Run(params string[] args)
    {
        var start = new ProcessStartInfo(Path.Combine(RepoRoot, "vmm"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            WorkingDirectory = RepoRoot,
        };
        foreach (string a in args)
        {
            start.ArgumentList.Add(a);
        }

        using Process process = Process.Start(start)!;
        process.StandardInput.Close();
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"vmm {string.Join(' ', args)} did not exit within 3 minutes");
        }

        return new Result(process.ExitCode, stdout.Result, stderr.Result);
    }
}

/// <summary>A temporary disk image.</summary>
internal sealed class TempImage : IDisposable
{
    public TempImage(long length, int seed)
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"vmm-run-{Guid.NewGuid():N}.img");
        byte[] bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        File.WriteAllBytes(Path, bytes);
    }

    public string Path { get; }

    public byte[] Read() => File.ReadAllBytes(Path);

    public void Dispose() => File.Delete(Path);
}
