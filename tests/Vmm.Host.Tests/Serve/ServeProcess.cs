using System.Diagnostics;
using Mono.Unix.Native;
using Vmm.Host.Tests.Run;

namespace Vmm.Host.Tests.Serve;

/// <summary><c>./vmm serve blk</c> as a process: started once its socket accepts, stopped with SIGTERM.</summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
internal static class ServeProcess
{
    /// <summary>
    /// Builds what <c>./vmm serve</c> runs (VMM_BUILD_ONLY=1 ./vmm, the native binary too when
    /// clang is installed), so that no start waits for a build.
    /// </summary>
    public static void EnsureBuilt()
    {
        var start = new ProcessStartInfo(Path.Combine(VmmProcess.RepoRoot, "vmm"))
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            WorkingDirectory = VmmProcess.RepoRoot,
        };
        start.Environment["VMM_BUILD_ONLY"] = "1";
        using Process build = Process.Start(start)!;
        Task<string> stderr = build.StandardError.ReadToEndAsync();
        _ = build.StandardOutput.ReadToEndAsync();
        if (!build.WaitForExit(TimeSpan.FromMinutes(10)))
        {
            build.Kill(entireProcessTree: true);
            Assert.Fail("VMM_BUILD_ONLY=1 ./vmm did not finish within 10 minutes");
        }

        Assert.That(build.ExitCode, Is.Zero, $"VMM_BUILD_ONLY=1 ./vmm failed: {stderr.Result}");
    }

    public static Process Start(string socket, string image, List<string>? stderr, IReadOnlyDictionary<string, string>? environment, params string[] extra)
    {
        var start = new ProcessStartInfo(Path.Combine(VmmProcess.RepoRoot, "vmm"))
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            WorkingDirectory = VmmProcess.RepoRoot,
        };
        foreach (string a in new[] { "serve", "blk", "--socket", socket, "--disk", image }.Concat(extra))
        {
            start.ArgumentList.Add(a);
        }

        foreach ((string name, string value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[name] = value;
        }

        Process process = Process.Start(start)!;
        if (stderr is not null)
        {
            process.ErrorDataReceived += (_, e) =>
            {
                if (e.Data is not null)
                {
                    lock (stderr)
                    {
                        stderr.Add(e.Data);
                    }
                }
            };
        }

        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        DateTime deadline = DateTime.UtcNow.AddSeconds(60);
        while (!Listening(socket))
        {
            Assert.That(process.HasExited, Is.False, "the server exited early");
            Assert.That(DateTime.UtcNow, Is.LessThan(deadline), "the socket did not appear");
            Thread.Sleep(20);
        }

        return process;
    }

    public static int Stop(Process process)
    {
        Syscall.kill(process.Id, Signum.SIGTERM);
        if (!process.WaitForExit(TimeSpan.FromSeconds(30)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail("the server did not stop on SIGTERM");
        }

        return process.ExitCode;
    }

    private static bool Listening(string path)
    {
        try
        {
            using var s = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
            s.Connect(new System.Net.Sockets.UnixDomainSocketEndPoint(path));
            return true;
        }
        catch (System.Net.Sockets.SocketException)
        {
            return false;
        }
    }
}
