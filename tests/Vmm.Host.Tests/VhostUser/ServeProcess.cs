using System.Diagnostics;
using System.Text;
using NUnit.Framework;
using Vmm.Host.Tests.Run;

namespace Vmm.Host.Tests.VhostUser;

/// <summary><c>./vmm serve ...</c> as a child process, started once its socket exists; SIGTERM at dispose.</summary>
internal sealed class ServeProcess : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _log = new();

    private ServeProcess(Process process, string socket)
    {
        _process = process;
        Socket = socket;
    }

    public string Socket { get; }

    public bool HasExited => _process.HasExited;

    public string Log
    {
        get
        {
            lock (_log)
            {
                return _log.ToString();
            }
        }
    }

    public static ServeProcess Blk(string image, string socket, int queues = 1) =>
        Start(socket, ["serve", "blk", "--socket", socket, "--disk", image, .. queues == 1 ? Array.Empty<string>() : ["--queues", queues.ToString(System.Globalization.CultureInfo.InvariantCulture)]]);

    public static ServeProcess Rng(string socket) => Start(socket, ["serve", "rng", "--socket", socket]);

    public static ServeProcess Start(string socket, params string[] args)
    {
        var start = new ProcessStartInfo(Path.Combine(VmmProcess.RepoRoot, "vmm"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            WorkingDirectory = VmmProcess.RepoRoot,
        };
        foreach (string a in args)
        {
            start.ArgumentList.Add(a);
        }

        var serve = new ServeProcess(Process.Start(start)!, socket);
        serve._process.StandardInput.Close();
        serve._process.OutputDataReceived += (_, _) => { };
        serve._process.ErrorDataReceived += (_, e) =>
        {
            lock (serve._log)
            {
                serve._log.AppendLine(e.Data);
            }
        };
        serve._process.BeginOutputReadLine();
        serve._process.BeginErrorReadLine();
        var clock = Stopwatch.StartNew();
        while (!File.Exists(socket))
        {
            if (serve._process.HasExited || clock.Elapsed > TimeSpan.FromMinutes(3))
            {
                string log = serve.Log;
                serve.Dispose();
                Assert.Fail($"vmm {string.Join(' ', args)} did not create its socket:\n{log}");
            }

            Thread.Sleep(20);
        }

        return serve;
    }

    /// <summary>SIGKILL: a crash, which leaves its socket file behind.</summary>
    public void Kill()
    {
        _process.Kill();
        _process.WaitForExit();
    }

    /// <summary>SIGTERM (it removes its socket), then SIGKILL after 10 s.</summary>
    public void Stop()
    {
        if (_process.HasExited)
        {
            return;
        }

        using (Process kill = Process.Start("kill", ["-TERM", _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
        {
            kill.WaitForExit();
        }

        if (!_process.WaitForExit(TimeSpan.FromSeconds(10)))
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit();
        }
    }

    public void Dispose()
    {
        Stop();
        _process.Dispose();
    }
}

/// <summary>A fresh directory with short paths (a socket path must fit in 108 bytes); removed at dispose.</summary>
internal sealed class WorkDir : IDisposable
{
    public WorkDir() => Path = Directory.CreateTempSubdirectory("vmm-vu-").FullName;

    public string Path { get; }

    public string this[string name] => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
