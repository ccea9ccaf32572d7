using System.Diagnostics;
using Vmm.Core.Posix;
using Vmm.Core.Tests.Support;
using Vmm.TestKit;

namespace Vmm.Core.Tests.Posix;

/// <summary>
/// A peer truncates a file we mapped: without the guard the next access is a SIGBUS the runtime
/// turns into a fatal error, so every test here would end the test process if the guard failed.
/// </summary>
[TestFixture]
public sealed class SigbusGuardTests
{
    private const ulong Page = 4096;

    [Test]
    public void The_guard_is_available_on_linux_x64()
    {
        Assert.That(SigbusGuard.UnavailableReason, Is.Null);
        Assert.That(SigbusGuard.IsAvailable, Is.True);
    }

    [Test]
    public async Task A_truncated_page_reads_as_zeroes_and_the_owner_is_told()
    {
        using SafeFileDescriptor fd = TestFiles.UnsealableMemfd(16 * Page);
        var told = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using SharedMapping mapping = SharedMapping.MapGuarded(fd, 0, 16 * Page, () => told.TrySetResult());
        Bytes(mapping, 0, 1)[0] = 1;
        Bytes(mapping, 8 * Page, 1)[0] = 2;
        Assert.That(mapping.IsGuarded, Is.True);

        TestFiles.Resize(fd, Page);

        Assert.That(Bytes(mapping, 0, 1)[0], Is.EqualTo(1), "the page still in the file is still shared");
        Assert.That(Bytes(mapping, 8 * Page, 1)[0], Is.Zero, "the vanished page reads as zeroes");
        Bytes(mapping, (8 * Page) + 1, 1)[0] = 3;
        Assert.That(Bytes(mapping, (8 * Page) + 1, 1)[0], Is.EqualTo(3), "and takes writes, which go nowhere");
        byte[] copy = Bytes(mapping, 10 * Page, (int)(4 * Page)).ToArray();
        Assert.That(copy, Is.All.Zero, "a copy across several vanished pages completes");
        await told.Task.WaitAsync(TimeSpan.FromSeconds(30));
    }

    [Test]
    public async Task Only_the_owner_of_the_faulting_range_is_told()
    {
        using SafeFileDescriptor truncated = TestFiles.UnsealableMemfd(4 * Page);
        using SafeFileDescriptor intact = TestFiles.UnsealableMemfd(4 * Page);
        var toldTruncated = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        int intactCalls = 0;
        using SharedMapping a = SharedMapping.MapGuarded(truncated, 0, 4 * Page, () => toldTruncated.TrySetResult());
        using SharedMapping b = SharedMapping.MapGuarded(intact, 0, 4 * Page, () => Interlocked.Increment(ref intactCalls));

        TestFiles.Resize(truncated, 0);
        Assert.That(Bytes(a, Page, 1)[0], Is.Zero);
        Bytes(b, Page, 1)[0] = 5;

        await toldTruncated.Task.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.That(Volatile.Read(ref intactCalls), Is.Zero);
        Assert.That(Bytes(b, Page, 1)[0], Is.EqualTo(5));
    }

    [Test]
    public async Task On_hugetlbfs_a_whole_huge_page_is_replaced()
    {
        // QEMU's memory-backend-file on hugetlbfs: the file cannot be sealed, and a mapping of it
        // can only be replaced in whole huge pages.
        using HugeTlbFs? huge = HugeTlbFs.TryMount(2, out string reason);
        if (huge is null)
        {
            Assert.Ignore($"No huge pages here: {reason}.");
        }

        ulong hugePage = (ulong)huge.PageSize;
        string path = Path.Combine(huge.Path, "guest-ram");
        using SafeFileDescriptor fd = TestFiles.Open(path, Mono.Unix.Native.OpenFlags.O_RDWR | Mono.Unix.Native.OpenFlags.O_CREAT);
        TestFiles.Resize(fd, 2 * hugePage);
        Assert.That(MemFd.TrySealAgainstShrinking(fd), Is.False, "hugetlbfs files cannot be sealed");
        Assert.That(MemFd.GetMappingPageSize(fd), Is.EqualTo(hugePage));
        var told = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using (SharedMapping mapping = SharedMapping.MapGuarded(fd, 0, 2 * hugePage, () => told.TrySetResult()))
        {
            Bytes(mapping, hugePage + 100, 1)[0] = 7;

            TestFiles.Resize(fd, hugePage);

            Assert.That(Bytes(mapping, hugePage + 100, 1)[0], Is.Zero);
            Assert.That(Bytes(mapping, (2 * hugePage) - 1, 1)[0], Is.Zero, "the whole huge page was replaced at once");
            await told.Task.WaitAsync(TimeSpan.FromSeconds(30));
        }

        File.Delete(path);
    }

    [Test]
    public void A_registration_is_dropped_with_its_mapping()
    {
        using SafeFileDescriptor fd = TestFiles.UnsealableMemfd(Page);
        for (int i = 0; i < SigbusGuard.Capacity + 10; i++)
        {
            // More mappings over time than there are slots: each frees its slot when disposed.
            using SharedMapping mapping = SharedMapping.MapGuarded(fd, 0, Page, () => { });
        }

        Assert.Pass();
    }

    [Test]
    public void The_handler_bytes_are_the_assembled_source()
    {
        string source = Path.Combine(TestFiles.RepoRoot, "src", "Vmm.Core", "Posix", "SigbusGuard.x86_64.S");
        string work = Directory.CreateTempSubdirectory("vmm-as-").FullName;
        try
        {
            // GNU as and objcopy (binutils; ./test installs it).
            Run("as", "-o", Path.Combine(work, "guard.o"), source);
            Run("objcopy", "-O", "binary", "-j", ".text", Path.Combine(work, "guard.o"), Path.Combine(work, "guard.bin"));
            Assert.That(SigbusGuard.X64Handler(), Is.EqualTo(File.ReadAllBytes(Path.Combine(work, "guard.bin"))));
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }

    private static unsafe Span<byte> Bytes(SharedMapping mapping, ulong offset, int length) => new(mapping.Address + offset, length);

    private static void Run(string tool, params string[] args)
    {
        var start = new ProcessStartInfo(tool) { RedirectStandardError = true };
        foreach (string a in args)
        {
            start.ArgumentList.Add(a);
        }

        Process process;
        try
        {
            process = Process.Start(start)!;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            Assert.Fail($"{tool} is not installed (binutils; ./test installs it): {e.Message}");
            return;
        }

        using (process)
        {
            string errors = process.StandardError.ReadToEnd();
            process.WaitForExit();
            Assert.That(process.ExitCode, Is.Zero, $"{tool} failed: {errors}");
        }
    }
}
