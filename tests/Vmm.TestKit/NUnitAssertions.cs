using System.Globalization;
using Akka.TestKit;
using NUnit.Framework;

namespace Vmm.TestKit;

/// <summary>
/// Routes Akka.TestKit assertion failures (ExpectMsg, ExpectNoMsg, AwaitAssert, ...)
/// to NUnit, so that they surface as <see cref="AssertionException"/>.
/// </summary>
public sealed class NUnitAssertions : ITestKitAssertions
{
    public static NUnitAssertions Instance { get; } = new();

    public void Fail(string format = "", params object[] args) =>
        Assert.Fail(Format(format, args));

    public void AssertTrue(bool condition, string format = "", params object[] args) =>
        Assert.That(condition, Is.True, Format(format, args));

    public void AssertFalse(bool condition, string format = "", params object[] args) =>
        Assert.That(condition, Is.False, Format(format, args));

    public void AssertEqual<T>(T expected, T actual, string format = "", params object[] args) =>
        Assert.That(actual, Is.EqualTo(expected), Format(format, args));

    public void AssertEqual<T>(T expected, T actual, Func<T, T, bool> comparer, string format = "", params object[] args)
    {
        ArgumentNullException.ThrowIfNull(comparer);
        if (!comparer(expected, actual))
        {
            Assert.Fail($"Expected: {expected}{Environment.NewLine}But was:  {actual}{Environment.NewLine}{Format(format, args)}");
        }
    }

    public Exception AssertThrows(Action action) =>
        Assert.Throws(Is.InstanceOf<Exception>(), () => action())!;

    public TException AssertThrows<TException>(Action action)
        where TException : Exception =>
        Assert.Throws<TException>(() => action())!;

    public async Task<Exception> AssertThrowsAsync(Func<Task> func)
    {
        ArgumentNullException.ThrowIfNull(func);
        try
        {
            await func().ConfigureAwait(false);
        }
        catch (Exception e)
        {
            return e;
        }

        Assert.Fail("Expected an exception but none was thrown.");
        return null!;
    }

    public async Task<TException> AssertThrowsAsync<TException>(Func<Task> func)
        where TException : Exception
    {
        ArgumentNullException.ThrowIfNull(func);
        try
        {
            await func().ConfigureAwait(false);
        }
        catch (Exception e)
        {
            Assert.That(e, Is.TypeOf<TException>());
            return (TException)e;
        }

        Assert.Fail($"Expected {typeof(TException).Name} but no exception was thrown.");
        return null!;
    }

    private static string Format(string format, object[] args) =>
        args is { Length: > 0 } ? string.Format(CultureInfo.InvariantCulture, format, args) : format;
}
