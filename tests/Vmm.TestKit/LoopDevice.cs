using System.Diagnostics;

namespace Vmm.TestKit;

/// <summary>
/// A loop block device (losetup(8)) over a file, for tests of block-device disks; detached on
/// dispose. <see cref="TryCreate"/> says why when the machine allows none (no root, no loop
/// driver, a container without /dev/loop*): the caller skips with that reason printed.
/// </summary>
public sealed class LoopDevice : IDisposable
{
    private LoopDevice(string path, string backingFile)
    {
        Path = path;
        BackingFile = backingFile;
    }

    /// <summary>/dev/loopN.</summary>
    public string Path { get; }

    public string BackingFile { get; }

    /// <summary>
    /// Attaches a loop device to a new file of <paramref name="bytes"/> (filled with
    /// <paramref name="fill"/>) with the given logical sector size; null and
    /// <paramref name="reason"/> when the machine cannot.
    /// </summary>
    public static LoopDevice? TryCreate(long bytes, int sectorSize, out string reason, byte fill = 0)
    {
        string file = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"vmm-loop-{Guid.NewGuid():N}.img");
        using (FileStream stream = File.Create(file))
        {
            byte[] block = new byte[64 * 1024];
            Array.Fill(block, fill);
            for (long left = bytes; left > 0; left -= block.Length)
            {
                stream.Write(block, 0, (int)Math.Min(left, block.Length));
            }
        }

        (int code, string output) = Run("losetup", $"--find --show --direct-io=off --sector-size {sectorSize} {file}");
        if (code != 0 || !output.Trim().StartsWith("/dev/loop", StringComparison.Ordinal))
        {
            File.Delete(file);
            reason = $"no loop device on this machine (losetup --find --show exited {code}: {output.Trim()})";
            return null;
        }

        reason = string.Empty;
        return new LoopDevice(output.Trim(), file);
    }

    public void Dispose()
    {
        Run("losetup", $"--detach {Path}");
        File.Delete(BackingFile);
    }

    private static (int Code, string Output) Run(string program, string arguments)
    {
        try
        {
            using var process = Process.Start(new ProcessStartInfo(program, arguments)
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            })!;
            string output = process.StandardOutput.ReadToEnd() + process.StandardError.ReadToEnd();
            process.WaitForExit();
            return (process.ExitCode, output);
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return (-1, $"{program}: {e.Message}");
        }
    }
}
