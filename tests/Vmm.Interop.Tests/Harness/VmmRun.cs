using System.Diagnostics;

namespace Vmm.Interop.Tests.Harness;

/// <summary>What one <c>./vmm</c> invocation printed and returned.</summary>
public sealed record VmmResult(int ExitCode, string Stdout, string Stderr);

/// <summary>Runs <c>./vmm ARGS</c> to the end with stdin at EOF, stdout and stderr apart.</summary>
public static class VmmRun
{
    public static async Task<VmmResult> RunAsync(params string[] args) => await RunAsync(TimeSpan.FromMinutes(5), args).ConfigureAwait(false);

    public static async Task<VmmResult> RunAsync(TimeSpan timeout, params string[] args)
    {
        var start = new ProcessStartInfo(RepoLayout.VmmLauncher)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            WorkingDirectory = RepoLayout.Root,
        };
        foreach (var a in args)
            start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var cancel = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cancel.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"vmm {string.Join(' ', args)} did not exit within {timeout.TotalMinutes:0.#} minutes");
        }
        return new VmmResult(process.ExitCode, await stdout.ConfigureAwait(false), await stderr.ConfigureAwait(false));
    }
}
